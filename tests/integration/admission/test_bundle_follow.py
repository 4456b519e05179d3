"""The webhook follows the bundles the syncer hands over in the ConfigMap, on a real kube-apiserver and OPA:
seeded at start, swapped when newer, kept through a partition."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from admission.controller import AdmissionController
from admission.follow import BundleFollower, HandoffError
from admission.review import AdmissionRequest
from localpeers.hub import free_port
from localpeers.kube import KubeAPI
from localpeers.tlsca import TestCA
from localpeers.webhook import running_webhook
from tests.support.handoff_rig import GROUP, KEY_ID, HandoffRig, handoff_kube, handoff_rig
from tests.support.policy_generations import generation_dir, pod_review


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    with handoff_kube(tmp_path_factory.mktemp("handoff")) as api:
        yield api


@pytest.fixture
def rig(tmp_path: Path, kube: KubeAPI) -> Iterator[HandoffRig]:
    with handoff_rig(kube, tmp_path) as rig:
        yield rig


async def allowed(controller: AdmissionController, generation: int) -> bool:
    return (await controller.decide(pod_review(f"g{generation}", generation))).allowed


def test_a_webhook_starts_from_the_configmap_and_follows_newer_bundles(rig: HandoffRig) -> None:
    rig.put(rig.bundle(3))

    async def scenario(controller: AdmissionController, follower: BundleFollower) -> None:
        assert await follower.check_once() == "swapped"  # the seed: before the webhook says ready (app.py)
        assert controller.status.counter == 3
        assert await allowed(controller, 3)
        assert not await allowed(controller, 0)
        assert await follower.check_once() == "unchanged"
        rig.put(rig.bundle(3))  # handed over again (a syncer restart): same bundle, nothing to do
        assert await follower.check_once() == "unchanged"
        rig.put(rig.bundle(4))
        assert await follower.check_once() == "swapped"
        assert controller.status.counter == 4
        assert await allowed(controller, 4)
        assert not await allowed(controller, 3)
        assert controller.status.swaps == 2

    rig.run(scenario)


def test_without_a_configmap_the_start_up_set_stays(rig: HandoffRig) -> None:
    async def scenario(controller: AdmissionController, follower: BundleFollower) -> None:
        assert await follower.check_once() == "absent"
        assert controller.status.counter == -1
        assert await allowed(controller, 0)
        assert not await allowed(controller, 1)

    rig.run(scenario)


def test_a_partitioned_webhook_keeps_its_last_verified_set(rig: HandoffRig) -> None:
    rig.put(rig.bundle(2))

    async def scenario(controller: AdmissionController, follower: BundleFollower) -> None:
        assert await follower.check_once() == "swapped"
        # the same webhook, the API server now out of reach (nobody listens on this port)
        cut_off = rig.follower(controller, kube_url=f"https://127.0.0.1:{free_port()}")
        try:
            for _ in range(3):
                with pytest.raises(HandoffError, match="unreachable"):
                    await cut_off.check_once()
        finally:
            await cut_off.close()
        assert controller.status.counter == 2  # the last verified set stays in force, nothing emptied
        assert await allowed(controller, 2)
        assert not await allowed(controller, 0)
        assert controller.status.swaps == 1

    rig.run(scenario)


def test_the_served_webhook_seeds_from_the_configmap_and_says_what_it_enforces(
    rig: HandoffRig, kube: KubeAPI, tmp_path: Path
) -> None:
    """The webhook as served (settings -> follower -> lifespan): seeded before ready, /readyz names the counter
    in force and the last refusal, and a newer bundle is taken without a restart."""
    rig.put(rig.bundle(7))
    public = tmp_path / "ci-1.pem"
    public.write_bytes(
        rig.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = tmp_path / "token"
    token.write_text(kube.token)
    policies = generation_dir(tmp_path, 0)
    with running_webhook(
        tmp_path / "webhook",
        TestCA(tmp_path / "webhook-ca"),
        policy_dir=policies,
        exempt_namespaces=(),
        opa_port=rig.opa.port,
        follow_bundles=True,
        follow_interval_s=0.2,
        bundle_keys=(f"{KEY_ID}={public}",),
        bundle_group=GROUP,
        kube_url=kube.url,
        kube_token_file=token,
        kube_ca_file=kube.ca_file,
    ) as webhook:
        with webhook.client() as client:
            ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["counter"] == 7  # seeded: the start-up set (generation 0) never answered a review
        assert webhook.review(review_of(pod_review("s", 7)))["allowed"]
        rig.put(rig.bundle(8, group="stores"))  # refused: another group's
        rig.put(rig.bundle(9))
        with webhook.client() as client:
            deadline = time.monotonic() + 30  # a bound on the wait, not a timed assertion
            while (ready := client.get("/readyz").json())["counter"] != 9:
                assert time.monotonic() < deadline, ready
                time.sleep(0.1)
        assert webhook.review(review_of(pod_review("t", 9)))["allowed"]
        assert not webhook.review(review_of(pod_review("u", 7)))["allowed"]


def review_of(request: AdmissionRequest) -> dict[str, object]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": dict(request.raw)}
