"""Swapped-in sets take turns in two OPA namespaces and a swap writes only what changed (admission/swap.py,
OpaDecider.load): against a real OPA, what the decider skips must really be in OPA. An OPA that restarted empty
between two swaps (before any /readyz probe noticed) must not be taken to still hold the slot's modules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from admission.controller import SLOTS, AdmissionController
from localpeers.opa_server import OpaServer, opa_server
from tests.integration.admission.test_policy_swap import controller_for
from tests.support.policy_generations import generation_set, pod_review


def policy_writes(opa: OpaServer) -> dict[str, str]:
    """id -> source of every module OPA holds."""
    answer = httpx.get(f"{opa.url}/v1/policies", timeout=5).json()
    return {p["id"]: p["raw"] for p in answer["result"]}


def test_a_swap_into_a_slot_writes_only_the_changed_module_and_decides_by_the_new_set(tmp_path: Path) -> None:
    async def scenario(opa: OpaServer) -> None:
        controller = controller_for(generation_set(tmp_path, 0), opa)
        await controller.start()
        try:
            for k in (1, 2):
                await controller.swap(generation_set(tmp_path, k))
            before = policy_writes(opa)
            decider = controller._opa
            assert {m: s for m, s in decider._held.items() if m in before} == decider._held
            await controller.swap(generation_set(tmp_path, 3))  # into slot 1, over generation 1
            after = policy_writes(opa)
            changed = sorted(m for m in after if after[m] != before.get(m))
            assert changed == [f"{SLOTS[0]}-edgetrust-admission-lib-gen"], changed  # only `expected := "3"`
            assert (await controller.decide(pod_review("a", 3))).allowed
            assert not (await controller.decide(pod_review("b", 2))).allowed
        finally:
            await controller.close()

    with opa_server(tmp_path / "opa") as opa:
        asyncio.run(scenario(opa))


def test_an_opa_restarted_between_swaps_gets_the_whole_set_not_only_what_changed(tmp_path: Path) -> None:
    async def swap(controller: AdmissionController, k: int) -> None:
        await controller.swap(generation_set(tmp_path, k))

    async def first(opa: OpaServer) -> AdmissionController:
        controller = controller_for(generation_set(tmp_path, 0), opa)
        await controller.start()
        await swap(controller, 1)  # slot 1
        await swap(controller, 2)  # slot 2
        return controller

    async def then(controller: AdmissionController) -> None:
        try:
            await swap(controller, 3)  # slot 1 again: the decider held gen 1 there, OPA holds nothing now
            verdict = await controller.decide(pod_review("c", 3))
            assert verdict.allowed, verdict.denials  # undecided (a module skipped, not in OPA) would deny
            assert not (await controller.decide(pod_review("d", 1))).allowed
        finally:
            await controller.close()

    loop = asyncio.new_event_loop()
    try:
        with opa_server(tmp_path / "opa") as opa:
            port = opa.port
            controller = loop.run_until_complete(first(opa))
        with opa_server(tmp_path / "opa-again", port=port):  # the sidecar restarted: an empty OPA
            loop.run_until_complete(then(controller))
    finally:
        loop.close()
