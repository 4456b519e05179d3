"""gatekeeper-library's `library/general` suites, unchanged, on our decision path with the pinned OPA.

The library is third-party content that is not committed here: it is looked for at $EDGETRUST_GATEKEEPER_LIBRARY
or ../shared/data/gatekeeper-library (next to this checkout in the workspace). Without it these tests are
skipped, saying so; tests/data/gatekeeper's suites (always run, below and in test_policy_cli.py) cover the same
machinery.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from admission.rego.opa import OpaDecider, OpaSettings
from admission.rego.suites import CaseResult, find_suites, run_suite
from localpeers.opa_server import OpaServer, opa_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
LIBRARY = Path(os.environ.get("EDGETRUST_GATEKEEPER_LIBRARY", REPO.parent / "shared" / "data" / "gatekeeper-library"))
GENERAL = LIBRARY / "library" / "general"
OWN = REPO / "tests" / "data" / "gatekeeper"


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    with opa_server(tmp_path_factory.mktemp("opa")) as server:
        yield server


def run(opa: OpaServer, suite: Path) -> list[CaseResult]:
    async def go() -> list[CaseResult]:
        decider = OpaDecider(OpaSettings(port=opa.port, timeout_s=10))
        try:
            return await run_suite(suite, decider)
        finally:
            await decider.close()

    return asyncio.run(go())


def library_suites() -> list[Path]:
    return find_suites([GENERAL]) if GENERAL.is_dir() else []


@pytest.mark.skipif(
    not GENERAL.is_dir(),
    reason=f"gatekeeper-library not found at {GENERAL} (third-party data, not committed; "
    "set EDGETRUST_GATEKEEPER_LIBRARY to a checkout of open-policy-agent/gatekeeper-library)",
)
@pytest.mark.parametrize("suite", library_suites(), ids=lambda p: p.parent.name)
def test_gatekeeper_library_suite_passes_unchanged(opa: OpaServer, suite: Path) -> None:
    results = run(opa, suite)
    assert results, f"{suite} has no cases"
    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("suite", find_suites([OWN]), ids=lambda p: p.parent.name)
def test_own_gatekeeper_format_suites_pass(opa: OpaServer, suite: Path) -> None:
    results = run(opa, suite)
    assert len(results) >= 3
    assert all(r.ok for r in results), [f"{r.name}: {r.detail}" for r in results if not r.ok]
