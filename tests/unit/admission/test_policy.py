from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from admission.errors import ConfigError
from admission.imageref import parse_image_reference
from admission.policy import FailureMode, Mode, PolicySet
from localpeers.webhook import LOOPBACK_REPOS, REPO_POLICIES, policy_dir, write_site_parameters


def test_repository_policies_load(tmp_path: Path) -> None:
    policies = PolicySet.load(REPO_POLICIES, parameters=write_site_parameters(tmp_path / "site.yaml"))
    names = {p.name for p in policies.rego}
    assert {"disallow_latest_tag", "no_privileged", "allowed_repos", "require_labels"} <= names
    assert [lib.name for lib in policies.libraries] == ["lib"]
    modes = {p.name: (p.mode, p.failure) for p in policies.rego}
    assert modes["require_labels"] == (Mode.WARN, FailureMode.OPEN)
    assert modes["no_privileged"] == (Mode.ENFORCE, FailureMode.CLOSED)
    assert policies.exempt("kube-system")
    assert not policies.exempt("default")


def test_the_shipped_library_names_no_registry_and_refuses_to_load_until_the_site_sets_its_own(
    tmp_path: Path,
) -> None:
    unset = r"parameters\.repos is site-specific and not set"
    with pytest.raises(ConfigError, match=r"allowed_repos/policy\.yaml: " + unset):
        PolicySet.load(REPO_POLICIES)
    site = tmp_path / "site.yaml"
    site.write_text("allowed_repos: {repos: []}\n")  # an empty allowlist would deny every pod
    with pytest.raises(ConfigError, match=unset):
        PolicySet.load(REPO_POLICIES, parameters=site)
    site.write_text("allowed_repos: {repos: [registry.retail.example/]}\n")
    repos = {p.name: p.parameters for p in PolicySet.load(REPO_POLICIES, parameters=site).rego}["allowed_repos"]
    assert repos == {"repos": ["registry.retail.example/"]}
    assert not set(yaml.safe_load((REPO_POLICIES / "allowed_repos" / "policy.yaml").read_text())["parameters"]["repos"])


@pytest.mark.parametrize(
    ("site", "reason"),
    [
        ("allowed_repo: {repos: [x/]}", "allowed_repo: no such policy"),
        ("allowed_repos: {repo: [x/]}", "allowed_repos.repo: the policy has no parameter 'repo'"),
        ("allowed_repos: {repos: registry.retail.example/}", "allowed_repos.repos: must be a list"),
        ("no_privileged: {x: 1}", "no_privileged: the policy takes no parameters"),
        ("allowed_repos: [x]", "allowed_repos: must be a mapping of parameter names"),
    ],
)
def test_a_site_parameters_file_is_checked_against_the_policies(tmp_path: Path, site: str, reason: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(site + "\n")
    with pytest.raises(ConfigError, match=f"{path}: {reason}"):
        PolicySet.load(REPO_POLICIES, parameters=path)


def test_the_test_site_copy_holds_the_loopback_registries(tmp_path: Path) -> None:
    policies = PolicySet.load(policy_dir(tmp_path / "p"))
    assert {p.name: p.parameters for p in policies.rego}["allowed_repos"] == {"repos": list(LOOPBACK_REPOS)}


def test_revision_changes_with_content(tmp_path: Path) -> None:
    first = PolicySet.load(policy_dir(tmp_path / "a")).revision
    changed = policy_dir(tmp_path / "b")
    (changed / "no_privileged" / "policy.yaml").write_text("name: no_privileged\nmode: warn\n")
    assert PolicySet.load(changed).revision != first


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        # the messages are edgetrust/schemas/policy.schema.json's (edgetrust/bundles/policyfile.py), naming the field
        ({"name": "Bad-Name"}, "name: 'Bad-Name' does not match"),
        ({"mode": "block"}, "mode: 'block' is not one of enforce, warn, audit, dryrun"),
        ({"failure": "sometimes"}, "failure: 'sometimes' is not one of closed, open"),
        ({"surprise": 1}, "unknown field 'surprise'"),
        ({"type": "image-signature", "images": []}, "images: .* should be non-empty"),
        ({"type": "image-signature", "images": ["*"]}, "needs keys or keyless"),
        ({"type": "image-signature", "images": ["*"], "keys": ["missing.pub"]}, "missing.pub"),
        ({"type": "image-signature", "images": ["*"], "keyless": {"trustedRoot": "x.json"}}, "keyless: 'identities'"),
        ({"type": "wasm"}, "type: 'wasm' is not one of rego, library, image-signature"),
        ({"match": {"kinds": "Pod"}}, "match.kinds: 'Pod' is not of type"),
        ({"match": {"excludedNamespace": ["x"]}}, "match: unknown field 'excludedNamespace'"),
        ({"images": ["*"]}, "images: only an image-signature policy has images"),
    ],
)
def test_policy_mistakes_are_named_at_load(tmp_path: Path, meta: dict[str, object], reason: str) -> None:
    folder = tmp_path / "p" / "broken"
    folder.mkdir(parents=True)
    (folder / "policy.yaml").write_text(yaml.safe_dump({"name": "broken", **meta}))
    (folder / "broken.rego").write_text("package edgetrust.admission.broken\n")
    with pytest.raises(ConfigError, match=reason):
        PolicySet.load(tmp_path / "p")


def test_rego_policy_without_rego_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "p" / "empty"
    folder.mkdir(parents=True)
    (folder / "policy.yaml").write_text("name: empty\n")
    with pytest.raises(ConfigError, match=r"needs a \.rego file"):
        PolicySet.load(tmp_path / "p")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PolicySet.load(tmp_path / "nowhere")


def test_empty_or_wrong_policy_directory_is_refused_unless_explicitly_allowed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no admission policy in"):
        PolicySet.load(tmp_path / "empty")
    only_lib = policy_dir(tmp_path / "lib", rego=False)  # a shared library decides nothing
    with pytest.raises(ConfigError, match="no admission policy in"):
        PolicySet.load(only_lib)
    assert PolicySet.load(tmp_path / "empty", allow_empty=True).empty
    with pytest.raises(ConfigError, match=r"Gatekeeper directory .* does not exist"):
        PolicySet.load(policy_dir(tmp_path / "full"), gatekeeper_dir=tmp_path / "gatekeper")


def test_image_globs_are_canonical_at_load(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    spellings = {"short": ["nginx"], "long": ["docker.io/library/nginx"], "alias": ["INDEX.docker.io:443/nginx"]}
    extra = {
        name: {"type": "image-signature", "images": images, "keys": ["k.pub"], "files": {"k.pub": pem}}
        for name, images in spellings.items()
    }
    policies = PolicySet.load(policy_dir(tmp_path / "p", rego=False, extra=extra))
    assert {p.images for p in policies.images} == {("docker.io/library/nginx",)}
    for image in ("nginx:1", "docker.io/nginx", "registry-1.docker.io/library/nginx@sha256:" + "a" * 64):
        assert all(p.covers(parse_image_reference(image)) for p in policies.images), image
    bad = {"bad": {"type": "image-signature", "images": ["ghcr.io/Acme/*"], "keys": ["k.pub"], "files": {"k.pub": pem}}}
    with pytest.raises(ConfigError, match="uppercase"):
        PolicySet.load(policy_dir(tmp_path / "bad", rego=False, extra=bad))
