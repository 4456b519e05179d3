"""The policy library's own Rego tests pass under the pinned OPA (what `trustctl policy test` will run on PRs)."""

from __future__ import annotations

import re
import subprocess

import pytest

from localpeers.peers import peer
from localpeers.webhook import REPO_POLICIES

pytestmark = pytest.mark.integration


def test_policy_library_rego_tests_pass() -> None:
    result = subprocess.run([str(peer("opa")), "test", str(REPO_POLICIES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"PASS: (\d+)/(\d+)", result.stdout)
    assert passed is not None
    assert passed.group(1) == passed.group(2)
    assert int(passed.group(1)) >= 25


def test_policy_library_is_opa_formatted() -> None:
    result = subprocess.run(
        [str(peer("opa")), "fmt", "--list", str(REPO_POLICIES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"run: opa fmt -w policies/admission\n{result.stdout}"
