"""`trustctl policy test` on a policy-repository PR, as the example workflow runs it: `policies/` itself passes
with a Markdown summary of what changes against the published revision; a Rego syntax error, an unknown
NetworkPolicy field and a lock-out of kube-system fail with the file named; a repository without tests warns.
The workflow's publish job, its `run:` scripts as written, publishes to a real hub with a CI publisher minted by
`trustd svid mint` as the workflow's comments say."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.hub import init_trust_files, running_hub
from localpeers.peers import peer
from localpeers.tlsca import TestCA
from localpeers.webhook import write_site_parameters

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def policy_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "trustctl"), "policy", "test", "--opa", str(peer("opa")), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(REPO / "policies", copy)
    write_site_parameters(copy / "parameters.yaml")  # the site's registries
    return copy


def published_without_allow_web(repo: Path, tmp_path: Path) -> Path:
    """The revision 'in production': today's policies minus allow-web, so the PR adds it."""
    before = tmp_path / "before"
    shutil.copytree(repo, before)
    (before / "networkpolicies" / "edge-store" / "allow-web.yaml").unlink()
    files = build_files(read_repository(before), counter=7, commit="0badc0ffee", group="gateways")
    bundle = tmp_path / "published.tar.gz"
    bundle.write_bytes(pack(sign_files(files, SigningKey("ci-1", ec.generate_private_key(ec.SECP256R1())))))
    return bundle


def test_our_policies_pass_with_a_pr_summary(repo: Path, tmp_path: Path) -> None:
    site = write_site_parameters(tmp_path / "site.yaml")  # the library names no registry: the site's file does
    against = str(published_without_allow_web(repo, tmp_path))
    done = policy_test(str(REPO / "policies"), "--markdown", "--parameters", str(site), "--against", against)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout
    assert summary.startswith("### edgetrust policy test: ✅ passed")
    assert re.search(r"\| Rego unit tests \(`opa test`\) \| 10 suites, (\d+)/\1 tests passed \(1/1 folders", summary)
    assert "| Policy files (policy.yaml, NetworkPolicies) | 10 admission policies, 5 NetworkPolicies valid |" in summary
    assert "#### NetworkPolicy changes against 000000000007-0badc0ffee" in summary
    assert "| edge-store | `shop/allow-web` | - | - |" in summary


def test_a_rego_syntax_error_names_the_file_and_line(repo: Path) -> None:
    broken = repo / "admission" / "no_privileged" / "no_privileged.rego"
    broken.write_text(broken.read_text() + "\nviolation contains {\n")
    done = policy_test(str(repo), "--markdown")
    assert done.returncode == 1
    assert "### edgetrust policy test: ❌ failed" in done.stdout
    assert "no_privileged.rego:" in done.stdout
    assert "rego_parse_error" in done.stdout


def test_an_unknown_networkpolicy_field_is_named(repo: Path) -> None:
    path = repo / "networkpolicies" / "edge-store" / "allow-web.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["spec"]["ingres"] = []
    path.write_text(yaml.safe_dump(policy))
    done = policy_test(str(repo))
    assert done.returncode == 1
    assert "allow-web.yaml" in done.stdout
    assert "ingres" in done.stdout


def test_a_policy_that_would_lock_out_kube_system_is_refused(repo: Path) -> None:
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": "kube-system"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    (repo / "networkpolicies" / "edge-store" / "deny-system.yaml").write_text(yaml.safe_dump(deny))
    done = policy_test(str(repo), "--markdown")
    assert done.returncode == 1
    assert "kube-system/deny-all would restrict kube-system" in done.stdout


def test_a_misspelt_mode_and_a_repository_without_site_parameters_are_named(repo: Path) -> None:
    meta = repo / "admission" / "no_privileged" / "policy.yaml"
    meta.write_text(meta.read_text().replace("mode: enforce", "mode: enfroce"))
    done = policy_test(str(repo))
    assert done.returncode == 1
    assert f"{meta}: mode: 'enfroce' is not one of enforce, warn, audit, dryrun" in done.stdout
    meta.write_text(meta.read_text().replace("mode: enfroce", "mode: enforce"))
    (repo / "parameters.yaml").unlink()
    done = policy_test(str(repo))
    assert done.returncode == 1
    assert "allowed_repos/policy.yaml: parameters.repos is site-specific and not set" in done.stdout
    assert "policies FAILED: " in done.stdout.splitlines()[-1]


def test_a_repository_without_tests_is_warned(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(REPO / "policies" / "networkpolicies", bare / "networkpolicies")
    done = policy_test(str(bare))
    assert done.returncode == 0, done.stdout
    assert "WARNING no tests found" in done.stdout


def test_the_example_workflow_runs_this_command() -> None:
    workflow = yaml.safe_load((REPO / "examples" / "policy-repo-workflow.yaml").read_text())
    steps = workflow["jobs"]["policy-test"]["steps"]
    commands = " ".join(str(step.get("run", "")) for step in steps)
    assert "trustctl policy test policies --markdown --against" in commands


def _expand(text: str, context: dict[str, dict[str, str]]) -> str:
    """GitHub's `${{ secrets.X }}`, `${{ vars.X }}`, `${{ github.x }}`; anything else fails the test."""

    def value(found: re.Match[str]) -> str:
        scope, name = found.group(1), found.group(2)
        assert name in context[scope], f"the workflow uses {scope}.{name}, which this test does not set"
        return context[scope][name]

    expanded = re.sub(r"\$\{\{\s*(secrets|vars|github)\.(\w+)\s*\}\}", value, text)
    assert "${{" not in expanded, expanded
    return expanded


def test_the_example_workflow_publishes_with_a_minted_ci_publisher(tmp_path: Path) -> None:
    publisher = "spiffe://retail.example/publisher/ci"
    signing = ec.generate_private_key(ec.SECP256R1())
    keys = tmp_path / "publisher-keys"
    keys.mkdir()
    (keys / "ci-1.pem").write_bytes(
        signing.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "groups": {"gateways": {"matchLabels": {"site-class": "edge-gateway"}, "publishers": [publisher]}},
                "clusters": {"site-0": {"labels": {"site-class": "edge-gateway"}}},
            }
        )
    )
    ek_roots = tmp_path / "ek-roots"
    ek_roots.mkdir()
    (ek_roots / "unused.pem").write_bytes(TestCA(tmp_path / "unused-ek-ca").ca_file.read_bytes())
    # on the hub machine, as the workflow's comments say (the hub's data dir: running_hub's <workdir>/hub)
    init_trust_files(tmp_path / "hub" / "hub", "retail.example")  # `trustd ca init`, once per trust domain
    minted = subprocess.run(
        [str(Path(sys.executable).parent / "trustd"), "svid", "mint", "--spiffe-id", publisher, "--ttl", "30d",
         "--out", "ci-publisher", "--data-dir", str(tmp_path / "hub" / "hub"), "--trust-domain", "retail.example"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    credentials = tmp_path / "ci-publisher"
    key_pem = signing.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "policies", checkout / "policies")
    write_site_parameters(checkout / "policies" / "parameters.yaml")  # a policy repository holds its site's values
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    job: dict[str, Any] = yaml.safe_load((REPO / "examples" / "policy-repo-workflow.yaml").read_text())["jobs"][
        "publish"
    ]
    assert job["needs"] == "policy-test"  # nothing is published that did not pass the tests

    with running_hub(
        tmp_path / "hub", ek_roots=ek_roots, fleet_file=fleet, policy_keys_dir=keys, trust_domain="retail.example"
    ) as hub:
        context = {
            "secrets": {
                "EDGETRUST_SVID": (credentials / "svid.pem").read_text().strip(),  # as `gh secret set` keeps them
                "EDGETRUST_SVID_KEY": (credentials / "svid.key").read_text().strip(),
                "EDGETRUST_CA_BUNDLE": (credentials / "bundle.pem").read_text().strip(),
                "POLICY_SIGNING_KEY": key_pem.decode().strip(),
            },
            "vars": {"EDGETRUST_HUB_URL": hub.url, "POLICY_GROUP": "gateways", "POLICY_KEY_ID": "ci-1"},
            "github": {"run_number": "3", "sha": "c0ffee0123456789"},
        }
        ran = []
        for step in job["steps"]:
            if "run" not in step or step["name"].startswith("install"):
                continue  # actions/checkout, setup-python, pip install: this checkout has them already
            env = {k: _expand(str(v), context) for k, v in (step.get("env") or {}).items()}
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", _expand(step["run"], context)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=checkout,
                env={
                    **os.environ,
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                    "RUNNER_TEMP": str(runner_temp),
                    **env,
                },
            )
            assert done.returncode == 0, (step["name"], done.stdout, done.stderr)
            ran.append(step["name"])
            if step["name"] == "write the publisher's credentials":
                written = runner_temp / "edgetrust"
                assert stat.S_IMODE(written.stat().st_mode) == 0o700
                for name in ("svid.pem", "svid.key", "bundle.pem", "signing.key"):
                    assert stat.S_IMODE((written / name).stat().st_mode) == 0o600, name
                assert publisher in done.stdout  # trustctl svid show read it back
                assert "BEGIN" not in done.stdout + done.stderr  # no secret echoed
            if step["name"] == "trustctl policy publish":
                assert "wave 0 [" in done.stdout, done.stdout
        assert ran == [
            "write the publisher's credentials",
            "trustctl policy build",
            "trustctl policy publish",
            "forget the credentials",
        ]
        assert hub.hub.policy is not None
        rollout = hub.hub.policy.rollout("gateways")
        assert rollout is not None
        assert (rollout.counter, rollout.revision) == (3, "000000000003-c0ffee012345")  # the commit, short
    assert not (runner_temp / "edgetrust").exists()
