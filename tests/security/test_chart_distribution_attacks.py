"""Attacks on the distribution plane as it runs on the real node: the chart's syncer pod, the hub on the node's
address, kube-router enforcing what the syncer applied on real packets.

The hub is the attacker's way in, in two ways a real fleet can meet:
- a key planted on the hub: the hub accepts bundles signed by `rogue` (its key directory holds it), the cluster
  trusts only the publisher's `ci-1`; a bundle signed by `rogue` that lifts every rule is served to the cluster;
- a hub restored from an old backup of its policy state: it serves revision 1 to a cluster that applied revision
  3, and then accepts an older revision 2 (genuinely signed, without the rules) that an attacker publishes again.
Each time the syncer pod refuses, reports the refusal to the hub, and the NetworkPolicies in force stay: the
objects are untouched (same resourceVersions) and the stranger's packets are still refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from localpeers.chartrelease import ClusterImages
from localpeers.chartsyncer import DistributionSite, deny_all_but, distribution_site
from localpeers.realcluster import RealCluster
from tests.integration.realcluster.workloads import PEER_LABELS, RunningPod, reaches, server_peer_stranger

pytestmark = pytest.mark.integration

WORKLOADS = "attack-workloads"
SERVER = {"app": "server"}
PEER = PEER_LABELS
LIFTED: list[dict[str, Any]] = [
    {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "nothing-selected", "namespace": WORKLOADS},
        "spec": {"podSelector": {"matchLabels": {"app": "none"}}, "policyTypes": ["Ingress"]},
    }
]


@pytest.fixture(scope="module")
def site(
    real_cluster: RealCluster, cluster_images: ClusterImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DistributionSite]:
    with distribution_site(
        real_cluster,
        cluster_images,
        tmp_path_factory.mktemp("attacked-distribution"),
        namespace="attack-syncer",
        hub_only_keys=("rogue",),
    ) as found:
        yield found


@pytest.fixture(scope="module")
def pods(real_cluster: RealCluster) -> Iterator[dict[str, RunningPod]]:
    with server_peer_stranger(real_cluster, WORKLOADS) as found:
        yield found


def enforced(cluster: RealCluster, pods: dict[str, RunningPod], timeout_s: float = 60) -> None:
    """Until only the peer reaches the server."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {name: reaches(cluster, pods[name], pods["server"]) for name in ("peer", "stranger")}
        if seen == {"peer": True, "stranger": False}:
            return
        assert time.monotonic() < deadline, f"traffic to the server: {seen}"
        time.sleep(0.5)


def applied(site: DistributionSite, counter: int) -> dict[str, Any]:
    """The syncer's report of revision `counter` in force (applied, or unchanged when it holds the same policies)."""
    return site.wait_report(
        lambda r: r.get("revision", "").startswith(f"{counter:012d}") and r["result"] in ("applied", "unchanged")
    )


def refused(site: DistributionSite, reason: str) -> dict[str, Any]:
    """The syncer's report of a refusal for `reason` (a refused bundle is named in the reason only: its
    `revision` field stays empty, since nothing the syncer refused is reported as a revision it holds)."""
    return site.wait_report(lambda r: r.get("result") == "refused" and reason in r.get("error", ""))


def publish(site: DistributionSite, blob: bytes) -> None:
    answer = site.publish(blob)
    assert answer.status_code == 200, answer.text


def test_a_bundle_signed_by_a_key_planted_on_the_hub_is_refused_by_the_syncer_pod(
    site: DistributionSite, pods: dict[str, RunningPod]
) -> None:
    publish(site, site.trusted.bundle(deny_all_but(WORKLOADS, server=SERVER, peer=PEER), counter=1))
    applied(site, 1)
    enforced(site.cluster, pods)
    in_force = site.network_policies(WORKLOADS)
    assert set(in_force) == {"default-deny", "allow-peer"}

    (rogue,) = site.hub_only
    publish(site, rogue.bundle(LIFTED, counter=2))  # the hub trusts the planted key, so it serves the bundle
    report = refused(site, "signed by key 'rogue', which is not trusted here")
    assert report["revision"] == ""  # an unverified bundle's claims (its revision) are not even reported
    status = site.syncer_status()
    assert status["result"] == "refused"
    assert "rogue" in status["message"]
    assert site.network_policies(WORKLOADS) == in_force  # not one object touched
    enforced(site.cluster, pods, timeout_s=5)


def test_a_hub_restored_from_an_old_backup_cannot_roll_the_cluster_back(
    site: DistributionSite, pods: dict[str, RunningPod]
) -> None:
    rules = deny_all_but(WORKLOADS, server=SERVER, peer=PEER)
    publish(site, site.trusted.bundle(rules, counter=3))
    applied(site, 3)
    backup = site.backup_policy_state("at-revision-3")
    for counter in (4, 5):  # the genuine rollout goes on after the backup
        publish(site, site.trusted.bundle(rules, counter=counter))
        applied(site, counter)
    in_force = site.network_policies(WORKLOADS)
    enforced(site.cluster, pods)

    site.restore_policy_state(backup)  # the hub now serves revision 3 to a cluster that applied 5
    refused(site, "revision 000000000003-c0003 (counter 3) is not newer than the applied counter 5")
    assert "not newer than the applied counter 5" in site.syncer_status()["message"]
    publish(site, site.trusted.bundle(LIFTED, counter=4))  # an older revision, genuinely signed, without the rules
    refused(site, "revision 000000000004-c0004 (counter 4) is not newer than the applied counter 5")
    assert site.network_policies(WORKLOADS) == in_force
    enforced(site.cluster, pods, timeout_s=5)
