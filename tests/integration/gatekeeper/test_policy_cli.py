"""`trustctl policy test`, as a PR check runs it: exit codes and what a person reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localpeers.peers import peer

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


def test_suites_and_rego_unit_tests_pass() -> None:
    done = trustctl(str(OWN), str(REPO / "policies" / "admission"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 suites, 11 cases: 11 passed, 0 failed" in done.stdout
    assert "Rego unit tests: 1/1 folders passed" in done.stdout


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


def test_a_template_that_does_not_compile_is_named(tmp_path: Path) -> None:
    shutil.copytree(OWN / "edgerequiredlabels", tmp_path / "edgerequiredlabels")
    template = tmp_path / "edgerequiredlabels" / "template.yaml"
    template.write_text(template.read_text().replace("not regex.match(", "not regex.match(("))
    done = trustctl(str(tmp_path))
    assert done.returncode == 1
    assert "ConstraintTemplate k8sedgerequiredlabels: OPA refused it" in done.stdout
    assert "rego_parse_error" in done.stdout
