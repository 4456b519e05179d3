"""`trustctl policy test`, as a PR check runs it: exit codes and what a person reads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localpeers.peers import peer
from localpeers.webhook import write_site_parameters

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
OWN = REPO / "tests" / "data" / "gatekeeper"


def trustctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "trustctl"), "policy", "test", "--opa", str(peer("opa")), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_suites_and_rego_unit_tests_pass_counted_for_people(tmp_path: Path) -> None:
    site = write_site_parameters(tmp_path / "site.yaml")
    done = trustctl(str(OWN), str(REPO / "policies" / "admission"), "--parameters", str(site))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.splitlines()[-1]
    assert re.fullmatch(
        r"policies passed: 10 Rego suites \((\d+) tests\) passed, 3 Gatekeeper suites \(11 cases\) passed, "
        r"10 admission policies valid, 0 NetworkPolicies valid",
        summary,
    ), summary
    report = json.loads(
        trustctl(str(OWN), str(REPO / "policies" / "admission"), "--parameters", str(site), "--json").stdout
    )
    counts = report["counts"]
    assert counts["rego_tests"] == sum(len(r["tests"]) for r in report["rego_tests"]) > 0
    assert (counts["gatekeeper_suites"], counts["gatekeeper_cases"], counts["rego_suites"]) == (3, 11, 10)


def test_a_failing_rego_test_is_named(tmp_path: Path) -> None:
    shutil.copytree(REPO / "policies" / "admission" / "no_host_path", tmp_path / "no_host_path")
    shutil.copytree(REPO / "policies" / "admission" / "lib", tmp_path / "lib")
    test = tmp_path / "no_host_path" / "no_host_path_test.rego"
    test.write_text(test.read_text().replace("test_host_path_denied if {", "test_host_path_denied if {\n\tfalse", 1))
    done = trustctl(str(tmp_path))
    assert done.returncode == 1
    assert "FAIL Rego test edgetrust.admission.no_host_path_test.test_host_path_denied (" in done.stdout
    assert re.search(r"policies FAILED: 2 Rego suites: (\d+)/\d+ tests passed", done.stdout.splitlines()[-1])


def test_a_wrong_assertion_fails_the_run_and_names_the_case(tmp_path: Path) -> None:
    shutil.copytree(OWN / "edgeuniquehost", tmp_path / "edgeuniquehost")
    suite = tmp_path / "edgeuniquehost" / "suite.yaml"
    suite.write_text(suite.read_text().replace("violations: 1", "violations: 2"))
    done = trustctl(str(tmp_path), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    failed = [c for c in report["cases"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["edgeuniquehost/unique-hosts/host-taken"]
    assert "expected 2 violations matching" in failed[0]["detail"]
    text = trustctl(str(tmp_path)).stdout.splitlines()
    assert any(line.startswith("FAIL Gatekeeper case edgeuniquehost/unique-hosts/host-taken: ") for line in text)
    assert re.fullmatch(r"policies FAILED: 1 Gatekeeper suites: (\d+)/\d+ cases passed, .*", text[-1]), text[-1]


def test_a_template_that_does_not_compile_is_named(tmp_path: Path) -> None:
    shutil.copytree(OWN / "edgerequiredlabels", tmp_path / "edgerequiredlabels")
    template = tmp_path / "edgerequiredlabels" / "template.yaml"
    template.write_text(template.read_text().replace("not regex.match(", "not regex.match(("))
    done = trustctl(str(tmp_path))
    assert done.returncode == 1
    assert "ConstraintTemplate k8sedgerequiredlabels: OPA refused it" in done.stdout
    assert "rego_parse_error" in done.stdout
