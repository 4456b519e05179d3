"""The distribution plane for real: the chart's syncer runs as a pod on the real node, long-polls the hub (trustd on
the node's address, over mTLS with the cluster's SVID from the chart's Secret), verifies each bundle and applies its
NetworkPolicies with server-side apply; kube-router enforces them on real packets between pods.

Three pods in a workload namespace: `server` (answers with its name), `peer` (the one the allow rule names) and
`stranger`. Before any bundle both reach the server; revision 1 (default-deny plus allow-from-peer) lets only the
peer through; revision 2 drops the rules and traffic flows again. The syncer's own status (in its pod) and its
report at the hub name each revision. Attacks on the same plane: tests/security/test_chart_distribution_attacks.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from localpeers.chartrelease import ClusterImages
from localpeers.chartsyncer import DistributionSite, deny_all_but, distribution_site
from localpeers.realcluster import RealCluster
from tests.integration.realcluster.workloads import PEER_LABELS, RunningPod, reaches, server_peer_stranger

pytestmark = pytest.mark.integration

WORKLOADS = "np-workloads"
SERVER = {"app": "server"}
PEER = PEER_LABELS


@pytest.fixture(scope="module")
def site(
    real_cluster: RealCluster, cluster_images: ClusterImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DistributionSite]:
    with distribution_site(
        real_cluster, cluster_images, tmp_path_factory.mktemp("distribution"), namespace="np-syncer"
    ) as found:
        yield found


@pytest.fixture(scope="module")
def pods(real_cluster: RealCluster) -> Iterator[dict[str, RunningPod]]:
    with server_peer_stranger(real_cluster, WORKLOADS) as found:
        yield found


def wait_traffic(
    cluster: RealCluster, pods: dict[str, RunningPod], expected: dict[str, bool], timeout_s: float = 60
) -> None:
    """Until each client reaches the server (True) or not (False) as expected (kube-router syncs in seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {name: reaches(cluster, pods[name], pods["server"]) for name in expected}
        if seen == expected:
            return
        assert time.monotonic() < deadline, f"traffic to the server: {seen}, expected {expected}"
        time.sleep(0.5)


def test_the_syncer_pod_is_ready_with_the_charts_security_context(site: DistributionSite) -> None:
    pod = site.syncer_pod()
    assert [c["ready"] for c in pod["status"]["containerStatuses"]] == [True]
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # the process itself: uid 65532, no capability, a read-only root, a writable state volume (the PVC)
    status = site.syncer_exec("cat", "/proc/1/status")
    assert "Uid:\t65532\t65532\t65532\t65532" in status, status
    assert "CapEff:\t0000000000000000" in status, status
    assert (
        "Read-only file system"
        in site.cluster.kubectl(
            "-n", site.namespace, "exec", pod["metadata"]["name"], "--", "touch", "/probe", check=False
        ).stderr
    )
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == site.claim


def test_a_published_bundle_is_enforced_on_real_traffic_then_lifted(
    site: DistributionSite, pods: dict[str, RunningPod]
) -> None:
    cluster = site.cluster
    wait_traffic(cluster, pods, {"peer": True, "stranger": True}, timeout_s=20)  # before: no policy

    first = site.publish(site.trusted.bundle(deny_all_but(WORKLOADS, server=SERVER, peer=PEER), counter=1))
    assert first.status_code == 200, first.text
    report = site.wait_report(
        lambda r: r.get("revision", "").startswith("000000000001") and r.get("result") == "applied"
    )
    assert set(site.network_policies(WORKLOADS)) == {"default-deny", "allow-peer"}
    wait_traffic(cluster, pods, {"peer": True, "stranger": False})
    status = site.syncer_status()
    assert (status["result"], status["revision"]) == ("applied", report["revision"])
    rollout = site.running_hub().hub.policy.rollout("gateways")  # type: ignore[union-attr]
    assert rollout is not None
    assert rollout.applied.get("edge-node") == "applied"

    harmless = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "nothing-selected", "namespace": WORKLOADS},
            "spec": {"podSelector": {"matchLabels": {"app": "none"}}, "policyTypes": ["Ingress"]},
        }
    ]
    second = site.publish(site.trusted.bundle(harmless, counter=2))
    assert second.status_code == 200, second.text
    site.wait_report(lambda r: r.get("revision", "").startswith("000000000002") and r.get("result") == "applied")
    assert set(site.network_policies(WORKLOADS)) == {"nothing-selected"}  # the two rules pruned
    wait_traffic(cluster, pods, {"peer": True, "stranger": True})
    assert site.syncer_status()["revision"].startswith("000000000002")
