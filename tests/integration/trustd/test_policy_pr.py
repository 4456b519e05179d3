"""`trustctl policy test` on a policy-repository PR, as the example workflow runs it: `policies/` itself passes
with a Markdown summary of what changes against the published revision; a Rego syntax error, an unknown
NetworkPolicy field and a lock-out of kube-system fail with the file named; a repository without tests warns."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.peers import peer
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
