"""policy.yaml's format is edgetrust/schemas/policy.schema.json: a stock JSON Schema validator over that file and our
readers (the builder's policyfile, the webhook's PolicySet) accept and refuse the same files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from admission.errors import ConfigError
from admission.policy import PolicySet
from edgetrust.bundles import policyfile
from edgetrust.bundles.errors import PolicyFileError
from localpeers.webhook import REPO_POLICIES, write_site_parameters

REPO = Path(__file__).resolve().parents[4]
SCHEMA = json.loads((REPO / "edgetrust" / "schemas" / "policy.schema.json").read_text())

GOOD: list[dict[str, Any]] = [
    {},
    {"name": "p", "mode": "dryrun", "failure": "open"},
    {"match": None, "parameters": None},
    {"match": {"kinds": ["Pod"], "namespaces": ["shop-*"], "excludedNamespaces": None}},
    {"parameters": {"labels": ["a"]}, "siteParameters": ["labels"]},
    {"type": "library"},
    {"type": "image-signature", "images": ["ghcr.io/acme/*"], "keys": ["cosign.pub"]},
    {
        "type": "image-signature",
        "images": ["ghcr.io/acme/*"],
        "keyless": {"trustedRoot": "root.json", "identities": [{"issuer": "https://i", "subject": "s@x"}]},
    },
]
BAD: list[tuple[dict[str, Any], str]] = [
    ({"mode": "enfroce"}, "mode: 'enfroce' is not one of enforce, warn, audit, dryrun"),
    ({"mode": "Enforce"}, "mode: 'Enforce' is not one of"),
    ({"failure": "never"}, "failure: 'never' is not one of closed, open"),
    ({"name": "Has-Caps"}, "name: 'Has-Caps' does not match"),
    ({"typo": 1}, "unknown field 'typo'"),
    ({"match": {"kind": ["Pod"]}}, "match: unknown field 'kind'"),
    ({"match": {"kinds": "Pod"}}, "match.kinds: 'Pod' is not of type"),
    ({"parameters": ["x"]}, "parameters: ['x'] is not of type"),
    ({"siteParameters": "repos"}, "siteParameters: 'repos' is not of type 'array'"),
    ({"images": ["x/*"]}, "images: only an image-signature policy has images"),
    ({"type": "library", "parameters": {"a": 1}}, "parameters: a library is imported, never queried"),
    ({"type": "image-signature", "images": ["x/*"]}, "needs keys or keyless"),
    ({"type": "image-signature", "keys": ["k.pub"]}, "'images' is a required property"),
    ({"type": "image-signature", "images": ["x/*"], "keyless": {"trustedRoot": "r"}}, "keyless: 'identities'"),
    (
        {
            "type": "image-signature",
            "images": ["x/*"],
            "keyless": {"trustedRoot": "r", "identities": [{"issuer": "i"}]},
        },
        "keyless.identities[0]: 'subject' is a required property",
    ),
    ({"type": "wasm"}, "type: 'wasm' is not one of rego, library, image-signature"),
]


def test_the_schema_file_is_a_valid_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("meta", GOOD)
def test_a_good_file_passes_the_schema_file_and_the_reader(meta: dict[str, Any]) -> None:
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(meta)
    assert policyfile.validate(meta, "policy.yaml") == meta


@pytest.mark.parametrize(("meta", "message"), BAD)
def test_a_bad_file_fails_the_schema_file_and_the_reader_naming_the_field(meta: dict[str, Any], message: str) -> None:
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(meta)
    with pytest.raises(PolicyFileError) as raised:
        policyfile.validate(meta, "policies/admission/x/policy.yaml")
    assert str(raised.value).startswith("policies/admission/x/policy.yaml: ")
    assert message in str(raised.value)


@pytest.mark.parametrize(("meta", "message"), BAD)
def test_the_webhook_refuses_what_the_schema_refuses(tmp_path: Path, meta: dict[str, Any], message: str) -> None:
    folder = tmp_path / "p" / "x"
    folder.mkdir(parents=True)
    (folder / "policy.yaml").write_text(yaml.safe_dump({"name": "x", **meta} if "name" not in meta else meta))
    (folder / "x.rego").write_text("package edgetrust.admission.x\n")
    with pytest.raises(ConfigError, match=r"policy\.yaml: "):
        PolicySet.load(tmp_path / "p")


def test_every_shipped_policy_follows_the_schema_file() -> None:
    shipped = sorted(REPO_POLICIES.glob("*/policy.yaml"))
    assert len(shipped) >= 10
    for path in shipped:
        assert jsonschema.Draft202012Validator(SCHEMA).is_valid(yaml.safe_load(path.read_text())), path


def test_no_shipped_policy_names_a_demo_or_loopback_host() -> None:
    for path in REPO_POLICIES.glob("*/policy.yaml"):
        text = path.read_text().split("\n")
        values = "\n".join(line for line in text if not line.lstrip().startswith("#"))
        for host in ("127.0.0.1", "localhost", "edge.example"):
            assert host not in values, f"{path} ships {host}"


def test_a_bundle_built_with_site_parameters_carries_them_and_one_without_is_refused(tmp_path: Path) -> None:
    from edgetrust.bundles.format import build_files, read_repository

    repo = tmp_path / "policies"
    (repo / "admission").mkdir(parents=True)
    for name in ("allowed_repos", "lib"):
        (repo / "admission" / name).mkdir()
        for source in (REPO_POLICIES / name).iterdir():
            (repo / "admission" / name / source.name).write_bytes(source.read_bytes())
    with pytest.raises(PolicyFileError, match=r"allowed_repos/policy\.yaml: parameters\.repos is site-specific"):
        read_repository(repo)
    write_site_parameters(repo / "parameters.yaml")
    files = build_files(read_repository(repo), counter=1, commit="c", group="g")
    carried = yaml.safe_load(files["edgetrust/admission/allowed_repos/policy.yaml"])
    assert "localhost:" in carried["parameters"]["repos"]
    policyfile.check_bundle_files(files)  # what the hub and the syncer run: the merged file passes
    files["edgetrust/admission/allowed_repos/policy.yaml"] = b"name: allowed_repos\nsiteParameters: [repos]\n"
    with pytest.raises(PolicyFileError, match=r"parameters\.repos is site-specific and not set"):
        policyfile.check_bundle_files(files)
    files["edgetrust/admission/allowed_repos/policy.yaml"] = b"name: allowed_repos\nmode: enfroce\n"
    with pytest.raises(PolicyFileError, match="mode: 'enfroce' is not one of"):
        policyfile.check_bundle_files(files)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"kind: [\n", "not YAML"),
        (b"- a\n", "must be a Kubernetes object"),
        (b"apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", r"kind Pod \(v1\) is not a ConstraintTemplate"),
        (b"apiVersion: templates.gatekeeper.sh/v1\nkind: Constraint\n", "is not a ConstraintTemplate"),
    ],
)
def test_gatekeeper_files_in_a_bundle_are_yaml_templates_or_constraints(content: bytes, message: str) -> None:
    with pytest.raises(PolicyFileError, match=message):
        policyfile.check_bundle_files({"edgetrust/gatekeeper/x/template.yaml": content})


def test_example_site_parameters_make_the_shipped_library_load(tmp_path: Path) -> None:
    site = write_site_parameters(tmp_path / "site.yaml")
    assert PolicySet.load(REPO_POLICIES, parameters=site).rego


def test_the_example_parameters_file_makes_the_shipped_library_load() -> None:
    policies = PolicySet.load(REPO_POLICIES, parameters=REPO / "examples" / "parameters.yaml")
    repos = {p.name: p.parameters for p in policies.rego}["allowed_repos"]["repos"]
    assert repos == ["registry.retail.example/", "ghcr.io/retail-example/"]
