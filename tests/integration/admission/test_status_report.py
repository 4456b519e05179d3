"""The served webhook reports what it enforces to a real hub, as its cluster: at start, at once on each swap
(the heartbeat here is 5 minutes, so no heartbeat can be what the hub heard) and on each refusal, with the
reason; the hub's rollout view shows it per replica. Real kube-apiserver (the handoff ConfigMap), OPA and trustd.
The SVID is the fallback's files here (the Workload API path runs on the real node:
tests/integration/chart_real/test_workload_identity.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgetrust.bundles.format import unpack
from localpeers.kube import KubeAPI
from localpeers.tlsca import TestCA
from localpeers.webhook import running_webhook
from tests.support.fleet_hub import CLUSTER, FleetHub, running_fleet_hub
from tests.support.handoff_rig import GROUP, KEY_ID, HandoffRig, handoff_kube, handoff_rig
from tests.support.policy_generations import generation_dir
from trustd.server.policy.clusterstatus import ReplicaReport

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    with handoff_kube(tmp_path_factory.mktemp("handoff")) as api:
        yield api


@pytest.fixture
def rig(tmp_path: Path, kube: KubeAPI) -> Iterator[HandoffRig]:
    with handoff_rig(kube, tmp_path) as rig:
        yield rig


@pytest.fixture
def fleet_hub(tmp_path: Path, ek_roots: Path) -> Iterator[FleetHub]:
    with running_fleet_hub(tmp_path / "fleet", ek_roots=ek_roots) as hub:
        yield hub


def heard(hub: FleetHub, check: Callable[[ReplicaReport], bool], what: str) -> ReplicaReport:
    """The hub's view of replica webhook-a once `check` holds for it (a bound on the wait, not a timed assertion)."""
    policy = hub.running.hub.policy
    assert policy is not None
    deadline = time.monotonic() + 30
    while True:
        found = policy.clusters.replicas("site-a").get("webhook-a")
        if found is not None and check(found):
            return found
        assert time.monotonic() < deadline, f"{what}: the hub has {found}"
        time.sleep(0.1)


def test_each_replica_reports_its_revision_on_every_change_as_its_cluster(
    rig: HandoffRig, kube: KubeAPI, fleet_hub: FleetHub, tmp_path: Path
) -> None:
    rig.put(rig.bundle(7))
    public = tmp_path / "ci-1.pem"
    public.write_bytes(
        rig.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = tmp_path / "token"
    token.write_text(kube.token)
    cert, key = fleet_hub.svid(CLUSTER)
    with running_webhook(
        tmp_path / "webhook",
        TestCA(tmp_path / "webhook-ca"),
        policy_dir=generation_dir(tmp_path, 0),
        exempt_namespaces=(),
        opa_port=rig.opa.port,
        follow_bundles=True,
        follow_interval_s=0.2,
        bundle_keys=(f"{KEY_ID}={public}",),
        bundle_group=GROUP,
        kube_url=kube.url,
        kube_token_file=token,
        kube_ca_file=kube.ca_file,
        hub=fleet_hub.running.url,
        ca_bundle=fleet_hub.running.ca_bundle,
        svid=cert,
        svid_key=key,
        pod_name="webhook-a",
        report_heartbeat_s=300,
    ) as webhook:
        first = heard(fleet_hub, lambda r: r.counter == 7, "the seeded set")
        assert first.revision == webhook.controller.status.revision
        assert first.last_failure == ""
        rig.put(rig.bundle(8, group="stores"))  # refused by the replica: another group's
        refused = heard(fleet_hub, lambda r: r.last_failure != "", "the refusal")
        assert refused.counter == 7
        assert "stores" in refused.last_failure, refused
        broken = rig.bundle(8, broken=True)  # ours and validly signed, but OPA refuses it
        rig.put(broken)
        revision = unpack(broken).revision
        failed = heard(fleet_hub, lambda r: r.last_failed_revision == revision, "OPA's refusal, by bundle revision")
        assert failed.counter == 7
        assert "no_such_function" in failed.last_failure, failed
        assert failed.state(revision, 8) == ("failed", failed.last_failure)  # the rollout shows it failed
        rig.put(rig.bundle(9))
        swapped = heard(fleet_hub, lambda r: r.counter == 9, "the swap to counter 9")
        assert swapped.revision == webhook.controller.status.revision
        assert swapped.swaps == 2  # the refusals swapped nothing in
    policy = fleet_hub.running.hub.policy
    assert policy is not None
    assert list(policy.clusters.replicas("site-a")) == ["webhook-a"]  # reported for its own cluster only
    assert policy.clusters.replicas("store-1") == {}
