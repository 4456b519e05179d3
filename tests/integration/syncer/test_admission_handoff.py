"""Syncer -> webhook on a real kube-apiserver and OPA: the bundle the syncer verified and applied reaches the
webhook's policy set through the handoff ConfigMap; a bundle the syncer refuses never gets there; a handoff
that failed is reported and made on a later sync."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from admission.controller import AdmissionController
from admission.follow import BundleFollower
from edgetrust._internal import kube as kubeapi
from edgetrust.bundles.format import pack, unpack
from localpeers.hub import free_port
from localpeers.kube import KubeAPI
from syncer.agent import SyncAgent, SyncResult
from syncer.handoff import ConfigMapHandoff
from syncer.kube import KubeClient, KubeConfig
from syncer.sources import FileSource
from syncer.state import AgentState
from tests.support.handoff_rig import GROUP, KEY_ID, NAMESPACE, HandoffRig, handoff_kube, handoff_rig
from tests.support.policy_generations import pod_review

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    with handoff_kube(tmp_path_factory.mktemp("syncer-handoff")) as api:
        yield api


@pytest.fixture
def rig(tmp_path: Path, kube: KubeAPI) -> Iterator[HandoffRig]:
    with handoff_rig(kube, tmp_path) as rig:
        yield rig


@asynccontextmanager
async def syncer(rig: HandoffRig, drop: Path, state: Path, *, kube_url: str | None = None) -> AsyncIterator[SyncAgent]:
    """A syncer agent reading bundles from `drop`, handing them over to `kube_url` (default: the rig's)."""
    kube = KubeClient(KubeConfig(rig.kube.url, rig.kube.token, rig.kube.ca_file))
    handoff = ConfigMapHandoff(
        kubeapi.Direct(kube_url or rig.kube.url, rig.kube.token, rig.kube.ca_file), namespace=NAMESPACE, timeout_s=5
    )
    agent = SyncAgent(
        cluster="site-lyon",
        group=GROUP,
        site_class="edge-gateway",
        source=FileSource(drop),
        keys={KEY_ID: rig.key.public_key()},
        kube=kube,
        state=AgentState(state),
        handoff=handoff,
    )
    try:
        yield agent
    finally:
        await handoff.aclose()
        await kube.aclose()


def test_what_the_syncer_applies_the_webhook_enforces_and_nothing_else(rig: HandoffRig, tmp_path: Path) -> None:
    drop = tmp_path / "bundle.tar.gz"

    async def scenario(controller: AdmissionController, follower: BundleFollower) -> None:
        async with syncer(rig, drop, tmp_path / "state") as agent:
            await scenario_with(controller, follower, agent)

    async def scenario_with(controller: AdmissionController, follower: BundleFollower, agent: SyncAgent) -> None:
        drop.write_bytes(rig.bundle(1))
        outcome = await agent.sync_once()
        assert outcome.result.ok, outcome
        assert outcome.admission == "handed-over"
        assert outcome.report("site-lyon")["admission"] == "handed-over"
        assert await follower.check_once() == "swapped"
        assert controller.status.counter == 1
        assert (await controller.decide(pod_review("a", 1))).allowed
        # a forged bundle: the syncer refuses it, so the ConfigMap still holds 1
        files = dict(unpack(rig.bundle(2)).files)
        files["edgetrust/admission/lib/gen.rego"] = b'package edgetrust.lib.gen\n\nexpected := "9"\n'
        drop.write_bytes(pack(files))
        refused = await agent.sync_once()
        assert refused.result is SyncResult.REFUSED
        assert refused.admission == ""
        assert await follower.check_once() == "unchanged"
        assert controller.status.counter == 1
        drop.write_bytes(rig.bundle(3))
        assert (await agent.sync_once()).admission == "handed-over"
        assert await follower.check_once() == "swapped"
        assert (await controller.decide(pod_review("b", 3))).allowed
        assert not (await controller.decide(pod_review("c", 1))).allowed

    rig.run(scenario)


def test_a_failed_handoff_is_reported_and_made_after_a_restart(rig: HandoffRig, tmp_path: Path) -> None:
    drop = tmp_path / "bundle.tar.gz"
    state = tmp_path / "state"

    async def scenario(controller: AdmissionController, follower: BundleFollower) -> None:
        drop.write_bytes(rig.bundle(4))
        async with syncer(rig, drop, state, kube_url=f"https://127.0.0.1:{free_port()}") as cut_off:
            outcome = await cut_off.sync_once()
        assert outcome.result.ok  # the NetworkPolicies are applied: the handoff failing does not undo them
        assert outcome.admission.startswith("failed: kube_unreachable")
        assert await follower.check_once() == "absent"
        async with syncer(rig, drop, state) as restarted:
            await restarted.start()
            again = await restarted.sync_once()
        assert again.result is SyncResult.UNCHANGED
        assert again.admission == "handed-over"
        assert await follower.check_once() == "swapped"
        assert controller.status.counter == 4

    rig.run(scenario)
