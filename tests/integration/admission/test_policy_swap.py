"""The webhook swaps its policy set in a running process against a real OPA: no review fails or is decided by a
mix of two sets while 20 swaps happen under load, and a set OPA refuses leaves the old one in force."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from admission.controller import AdmissionController
from admission.errors import PolicySwapError
from admission.images.verifier import CacheSettings, ImageVerifier
from admission.metrics import AdmissionMetrics
from admission.policy import PolicySet
from admission.registry import RegistryClient
from admission.rego.opa import OpaDecider, OpaSettings
from localpeers.opa_server import OpaServer, opa_server
from tests.support.policy_generations import generation_set, pod_review

SWAPS = 20
BOTH = ["[generation", "[generation-constraint"]
WORKERS = 24


@pytest.fixture
def own_opa(tmp_path: Path) -> Iterator[OpaServer]:
    """An OPA of the test's own: the swap tests count the modules it holds."""
    with opa_server(tmp_path / "opa") as server:
        yield server


def controller_for(policies: PolicySet, opa: OpaServer) -> AdmissionController:
    metrics = AdmissionMetrics()
    images = ImageVerifier(RegistryClient(), metrics, CacheSettings())
    return AdmissionController(policies, OpaDecider(OpaSettings(port=opa.port)), images, metrics)


def run(
    tmp_path: Path,
    opa: OpaServer,
    scenario: Callable[[AdmissionController], Awaitable[None]],
    *,
    gatekeeper: bool = False,
) -> None:
    """`scenario` against a started controller enforcing generation 0 (closed after, also on failure)."""

    async def main() -> None:
        controller = controller_for(generation_set(tmp_path, 0, gatekeeper=gatekeeper), opa)
        await controller.start()
        try:
            await scenario(controller)
        finally:
            await controller.close()

    asyncio.run(main())


def opa_modules(opa: OpaServer) -> list[str]:
    answer = httpx.get(f"{opa.url}/v1/policies", timeout=5).json()
    return sorted(p["id"] for p in answer["result"])


def test_twenty_swaps_under_load_decide_every_review_by_one_whole_set(tmp_path: Path, own_opa: OpaServer) -> None:
    run(tmp_path, own_opa, lambda controller: twenty_swaps_under_load(controller, tmp_path, own_opa), gatekeeper=True)


async def twenty_swaps_under_load(controller: AdmissionController, tmp_path: Path, own_opa: OpaServer) -> None:
    sets = [generation_set(tmp_path, k, gatekeeper=True) for k in range(SWAPS + 1)]
    generation_of = {s.revision: k for k, s in enumerate(sets)}
    assert len(generation_of) == SWAPS + 1  # each set its own revision, or the check below proves nothing
    done = asyncio.Event()
    outcomes: list[tuple[str, str, int, bool, list[str]]] = []  # (in force at start, decided by, gen, allowed, why)
    rng = random.Random(16)

    async def worker(w: int) -> None:
        n = 0
        while not done.is_set():
            in_force = controller.policies.revision
            k = generation_of[in_force]
            label = rng.choice([k - 1, k, k + 1])
            verdict = await controller.decide(pod_review(f"{w}-{n}", label))
            outcomes.append((in_force, verdict.revision, label, verdict.allowed, verdict.denials))
            n += 1

    async def swapper() -> None:
        for k in range(1, SWAPS + 1):
            await asyncio.sleep(0.05)  # let reviews pile up on the set in force (pacing, not an assertion)
            await controller.swap(sets[k])
        await asyncio.sleep(0.05)
        done.set()

    await asyncio.gather(swapper(), *(worker(w) for w in range(WORKERS)))

    assert controller.policies.revision == sets[SWAPS].revision
    assert controller.status.swaps == SWAPS
    wrong = [o for o in outcomes if o[3] != (o[2] == generation_of[o[1]])]
    assert wrong == []
    # the verdict is the one of the set in force when the review came in, never a later one
    assert [o for o in outcomes if o[0] != o[1]] == []
    undecided = [o for o in outcomes if any("undecided" in d or "OPA" in d for d in o[4])]
    assert undecided == []
    decided_by = {generation_of[o[1]] for o in outcomes}
    assert decided_by == set(range(SWAPS + 1)), "every generation decided reviews while it was in force"
    assert sum(1 for o in outcomes if o[3]) > 0
    assert sum(1 for o in outcomes if not o[3]) > 0
    # a denial names both the Rego policy and the Gatekeeper constraint: both were decided by the same set
    one_sided = [o for o in outcomes if not o[3] and sorted(d.split("]")[0] for d in o[4]) != BOTH]
    assert one_sided == []
    metrics = controller.metrics.exposition().decode()
    assert 'edgetrust_admission_policy_swaps_total{result="applied"} 20.0' in metrics
    assert "edgetrust_admission_opa_errors_total{" not in metrics  # no OPA error of any code
    # the old sets are gone from OPA (the start-up set's too): what is left is the last set in its slot and the
    # one before it in the other slot (which the next swap loads over), each once
    namespace = "swap2" if SWAPS % 2 == 0 else "swap1"
    modules = opa_modules(own_opa)
    assert [m for m in modules if not m.startswith(("swap1-", "swap2-"))] == []
    for slot in ("swap1", "swap2"):
        assert f"{slot}-edgetrust-decision" in modules
        assert f"{slot}-edgetrust-admission-generation-generation" in modules
    assert len([m for m in modules if "gatekeeper" in m]) == 4  # the template and its lib, once per slot
    # the slot in force holds the last generation, and the last write there replaced the one before in place
    expected = httpx.get(f"{own_opa.url}/v1/data/{namespace}/edgetrust/lib/gen/expected", timeout=5).json()
    assert expected["result"] == str(SWAPS)


def test_a_set_opa_refuses_leaves_the_one_in_force_and_is_reported(tmp_path: Path, own_opa: OpaServer) -> None:
    run(tmp_path, own_opa, lambda controller: a_refused_set(controller, tmp_path, own_opa))


async def a_refused_set(controller: AdmissionController, tmp_path: Path, own_opa: OpaServer) -> None:
    before = controller.policies.revision
    modules_before = opa_modules(own_opa)
    broken = generation_set(tmp_path, 1, broken=True)
    with pytest.raises(PolicySwapError, match="OPA refused"):
        await controller.swap(broken)
    assert controller.policies.revision == before
    assert (await controller.decide(pod_review("a", 0))).allowed
    assert not (await controller.decide(pod_review("b", 1))).allowed
    status = controller.status
    assert status.last_failed_revision == broken.revision
    assert "no_such_function" in status.last_failure
    assert 'edgetrust_admission_policy_swaps_total{result="failed"} 1.0' in controller.metrics.exposition().decode()
    assert opa_modules(own_opa) == modules_before  # what the refused set got in before OPA refused is removed
    # and the next good set still goes in
    await controller.swap(generation_set(tmp_path, 2))
    assert (await controller.decide(pod_review("c", 2))).allowed


def test_a_set_not_newer_than_the_one_in_force_is_refused(tmp_path: Path, own_opa: OpaServer) -> None:
    run(tmp_path, own_opa, lambda controller: an_older_set(controller, tmp_path))


async def an_older_set(controller: AdmissionController, tmp_path: Path) -> None:
    await controller.swap(generation_set(tmp_path, 5), counter=5)
    for counter in (5, 4):
        with pytest.raises(PolicySwapError, match="not above 5"):
            await controller.swap(generation_set(tmp_path, counter), counter=counter)
    assert controller.status.counter == 5
    assert (await controller.decide(pod_review("x", 5))).allowed
