"""Only a cluster's own identity reports for it, to a real trustd: an admission replica's report (the webhook's
`StatusReporter`, as it runs) and a syncer's status report naming ANOTHER cluster are refused and change
nothing; a node's SVID (an enrolled node of the fleet, which mints the cluster SVIDs for its site's pods) is
no cluster and is refused; a body over the bound, a field over its bound, an unknown field and a 65th live
replica are refused, never cut or evicted."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from admission.report import StatusReporter
from admission.swap import SwapReport
from edgetrust._internal import hubclient
from localpeers.nodes import enroll_node
from tests.integration.conftest import BootedDevice
from tests.support.fleet_hub import CLUSTER, GROUP, OTHER_GROUP_CLUSTER, PUBLISHER, FleetHub, running_fleet_hub
from trustd.server.policy.clusterstatus import MAX_REPLICAS

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet_hub(tmp_path: Path, ek_roots: Path) -> Iterator[FleetHub]:
    with running_fleet_hub(tmp_path, ek_roots=ek_roots) as hub:
        yield hub


class Replica:
    """The webhook's reporter as it runs, one report at a time (its loop retries; a test wants each answer)."""

    def __init__(self, hub: FleetHub, svid: tuple[Path, Path], pod: str, status: SwapReport) -> None:
        self.url = hub.running.url
        self.context = hubclient.tls_context(hub.running.ca_bundle, *svid)
        self.reporter = StatusReporter(lambda: status, hub_url=self.url, context=self.context, pod=pod)

    def body(self) -> dict[str, object]:
        return self.reporter.body()

    def send(self, body: dict[str, object]) -> None:
        async def go() -> None:
            async with hubclient.session(self.url, self.context) as http:
                await self.reporter.send(http, body)

        asyncio.run(go())


def replicas(hub: FleetHub, cluster: str) -> dict[str, int]:
    policy = hub.running.hub.policy
    assert policy is not None
    return {pod: r.counter for pod, r in policy.clusters.replicas(cluster).items()}


def test_a_replica_reports_for_its_own_cluster_only(fleet_hub: FleetHub) -> None:
    status = SwapReport("000000000007-abc", 7, 1)
    own = Replica(fleet_hub, fleet_hub.svid(CLUSTER), "webhook-a", status)
    own.send(own.body())
    assert replicas(fleet_hub, "site-a") == {"webhook-a": 7}

    # another cluster's SVID naming site-a in the body: refused, nothing recorded for either
    other = Replica(fleet_hub, fleet_hub.svid(OTHER_GROUP_CLUSTER), "webhook-a", SwapReport("x", 99, 1))
    with pytest.raises(hubclient.HubCallError) as refused:
        other.send({**other.body(), "cluster": "site-a"})
    assert refused.value.status == 403
    assert "only its own identity reports for a cluster" in refused.value.reason
    assert replicas(fleet_hub, "site-a") == {"webhook-a": 7}
    assert replicas(fleet_hub, "store-1") == {}
    # the same caller without a cluster in the body reports for its own cluster, never for site-a
    other.send(other.body())
    assert replicas(fleet_hub, "store-1") == {"webhook-a": 99}
    assert replicas(fleet_hub, "site-a") == {"webhook-a": 7}


def test_a_syncer_report_naming_another_cluster_is_refused(fleet_hub: FleetHub) -> None:
    policy = fleet_hub.running.hub.policy
    assert policy is not None
    policy.publish(GROUP, fleet_hub.signed_bundle(3), publisher=PUBLISHER)
    rollout = policy.rollout(GROUP)
    assert rollout is not None
    forged = {"cluster": "site-a", "revision": rollout.revision, "result": "applied", "admission": ""}
    with fleet_hub.client(OTHER_GROUP_CLUSTER) as other:
        answer = other.post("/v1/policy/status", json=[forged])
        poll = other.post("/v1/policy/bundle", json={"reports": [forged]})
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "not_authorized"
    assert poll.status_code == 403, poll.text
    assert "site-a" not in policy.status
    assert rollout.applied == {}
    with fleet_hub.client(CLUSTER) as own:
        assert own.post("/v1/policy/status", json=[forged]).status_code == 200
    assert rollout.applied == {"site-a": "applied"}


def test_a_node_svid_is_no_cluster(fleet_hub: FleetHub, golden_device: BootedDevice, tmp_path: Path) -> None:
    enroll_node(
        fleet_hub.running.url,
        fleet_hub.running.ca_bundle,
        tcti=golden_device.tcti,
        event_log=golden_device.event_log,
        out_dir=tmp_path / "node",
    )
    node = Replica(
        fleet_hub, (tmp_path / "node" / "svid.pem", tmp_path / "node" / "svid.key"), "w", SwapReport("r", 1, 0)
    )
    with pytest.raises(hubclient.HubCallError) as refused:
        node.send({**node.body(), "cluster": "site-a"})
    assert refused.value.status == 403
    assert refused.value.error == "caller_not_allowed"
    with pytest.raises(hubclient.HubCallError):
        node.send(node.body())
    assert replicas(fleet_hub, "site-a") == {}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"pod": "Not_A_Pod"}, "pod: a Kubernetes pod name"),
        ({"pod": "p" * 254}, "pod: a Kubernetes pod name"),
        ({"last_failure": "x" * 4001}, "last_failure: a string of at most 4000 characters"),
        ({"counter": 2**63}, "counter: an integer"),
        ({"counter": True}, "counter: an integer"),
        ({"spiffe_id": "spiffe://edge.example/cluster/store-1"}, "no field 'spiffe_id'"),
        ({"padding": "x" * 17000}, "limited to 16384 bytes"),
    ],
)
def test_bad_reports_are_refused_by_name(fleet_hub: FleetHub, change: dict[str, object], reason: str) -> None:
    with fleet_hub.client(CLUSTER) as own:
        body = {"pod": "w", "revision": "r", "counter": 1, **change}
        answer = own.post("/v1/policy/admission", content=json.dumps(body))
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["reason"]
    assert replicas(fleet_hub, "site-a") == {}


def test_a_replica_past_the_limit_is_refused_and_none_is_evicted(fleet_hub: FleetHub) -> None:
    with fleet_hub.client(CLUSTER) as own:
        for index in range(MAX_REPLICAS):
            assert own.post("/v1/policy/admission", json={"pod": f"w-{index}", "counter": 1}).status_code == 200
        extra = own.post("/v1/policy/admission", json={"pod": "w-extra", "counter": 1})
    assert extra.status_code == 409, extra.text
    assert extra.json()["error"] == "too_many_replicas"
    assert len(replicas(fleet_hub, "site-a")) == MAX_REPLICAS


def test_the_reporter_retries_an_unreachable_hub_without_touching_admission(tmp_path: Path) -> None:
    """No hub at the URL: each try fails as unreachable and is retried with backoff; the reporter never raises."""
    context = ssl.create_default_context()
    report = StatusReporter(
        lambda: SwapReport("r", 1, 0), hub_url="https://127.0.0.1:9", context=context, pod="w", check_s=0.01
    )

    async def run() -> str:
        report.start()
        for _ in range(500):
            await asyncio.sleep(0.01)
            if report.last_error:
                break
        await report.close()
        return report.last_error

    assert "127.0.0.1:9" in asyncio.run(run())
    assert report.sent == 0
