"""Admission policies follow the distribution plane on the real node: the chart's webhook (2 replicas) and syncer,
installed with no policy bundle in values; a bundle published at the hub reaches every replica, which swaps it in
without a restart or a `helm upgrade`; a validly signed bundle OPA refuses leaves the previous set in force.

The path, all real: the hub (trustd on the node's address) -> the syncer pod (verifies, applies, writes ConfigMap
edgetrust-admission-bundle with its Role) -> each webhook pod (reads it with its own token and Role, verifies it
again, swaps) -> the API server, which calls the webhook for every pod submitted here. Bundles hold the
generation policy of tests/support/policy_generations.py: generation k admits only pods labelled gen=k, so a
verdict names the set that decided it. Each replica is asked directly (its pod IP, TLS checked against the chart's
CA) what it enforces: /readyz `counter`, `last_failure`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from localpeers import chartrelease
from localpeers.admissionrelease import drop_namespace, fresh_namespace, webhook_service, workload_pod
from localpeers.chartrelease import ClusterImages
from localpeers.chartsyncer import GROUP, DistributionSite
from localpeers.nodeimages import TOOLS_IMAGE
from localpeers.realcluster import RealCluster
from tests.support.follow_site import (
    following_site,
    generation_bundle,
    replica_context,
    replica_status,
    wait_replicas,
    webhook_pods,
)

pytestmark = pytest.mark.integration

NAMESPACE, RELEASE = "pf-system", "et"
WORKLOADS = "pf-workloads"


@pytest.fixture(scope="module")
def site(
    real_cluster: RealCluster, cluster_images: ClusterImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DistributionSite]:
    work = tmp_path_factory.mktemp("follow")
    with following_site(real_cluster, cluster_images, work, namespace=NAMESPACE, release=RELEASE) as (found, seconds):
        print(f"\ninstall_to_ready_s (webhook + syncer, no bundle in values): {seconds:.1f}", flush=True)
        yield found


@pytest.fixture(scope="module")
def workloads(real_cluster: RealCluster) -> Iterator[str]:
    yield fresh_namespace(real_cluster, WORKLOADS)
    drop_namespace(real_cluster, WORKLOADS)


def review(site: DistributionSite, name: str, generation: str) -> tuple[bool, str]:
    """A pod labelled gen=<generation> submitted through the API server (server-side dry run: every webhook is
    called, nothing runs): (admitted, what kubectl said)."""
    pod = workload_pod(name, WORKLOADS, TOOLS_IMAGE)
    pod["metadata"]["labels"].update({"gen": generation, "gen2": generation})
    done = site.cluster.kubectl(
        "create", "--dry-run=server", "-o", "name", "-f", "-", stdin=json.dumps(pod), check=False
    )
    return done.returncode == 0, done.stdout + done.stderr


def restarts(site: DistributionSite) -> dict[str, int]:
    return {
        f"{p['metadata']['name']}/{c['name']}": c["restartCount"]
        for p in webhook_pods(site)
        for c in p["status"]["containerStatuses"]
    }


def test_the_chart_wires_the_follower_with_one_key_list_and_no_bundle(site: DistributionSite) -> None:
    pods = webhook_pods(site)
    assert len(pods) == 2
    for pod in pods:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        webhook, opa = spec["containers"]
        args = webhook["args"]
        assert "--follow-bundles" in args, args
        assert f"--bundle-group={GROUP}" in args, args
        assert f"--bundle-key={site.trusted.key_id}=/etc/edgetrust/bundle-keys/{site.trusted.key_id}.pem" in args
        assert not [a for a in args if a.startswith("--bundle=")], args  # no bundle in values
        assert "--default-library" in args
        mounts = {m["mountPath"] for m in webhook["volumeMounts"]}
        assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts
        assert "/var/run/secrets/kubernetes.io/serviceaccount" not in {
            m["mountPath"] for m in opa.get("volumeMounts", [])
        }
    # the webhook's token reads the handoff ConfigMap and nothing else of the namespace
    account = f"system:serviceaccount:{NAMESPACE}:{webhook_service(RELEASE)}"
    can = site.cluster.kubectl
    get_it = ("auth", "can-i", "get", "configmap/edgetrust-admission-bundle", "-n", NAMESPACE, "--as", account)
    assert can(*get_it, check=False).stdout.strip() == "yes"
    for denied in (
        ("get", "configmap/et-edgetrust-syncer-keys"),
        ("list", "configmaps"),
        ("patch", "configmap/edgetrust-admission-bundle"),
        ("get", "secrets"),
    ):
        assert can("auth", "can-i", *denied, "-n", NAMESPACE, "--as", account, check=False).stdout.strip() == "no"


def test_a_published_bundle_is_enforced_by_every_replica_then_a_refused_one_leaves_it(
    site: DistributionSite, workloads: str
) -> None:
    context = replica_context(site)
    before = replica_status(site, context)
    assert [s["counter"] for s in before.values()] == [-1, -1], before  # the default library, no bundle yet
    admitted, said = review(site, "gen-zero", "0")
    assert admitted, said
    history = chartrelease.helm("history", RELEASE, "-n", NAMESPACE, "-o", "json", kubeconfig=site.cluster.kubeconfig)
    assert len(json.loads(history.stdout)) == 1

    published = site.publish(generation_bundle(site, 1))
    assert published.status_code == 200, published.text
    pickup = wait_replicas(site, context, 1)
    print(f"\npublish_to_enforcing_s (both replicas): {pickup:.1f}", flush=True)
    refused, said = review(site, "gen-zero", "0")
    assert not refused, said
    assert "[generation] generation 1 only" in said, said
    assert "[generation] generation 1 only" not in review(site, "gen-one", "1")[1]
    assert review(site, "gen-one", "1")[0]
    report = site.wait_report(lambda r: r.get("revision", "").startswith("000000000001"))
    assert report.get("admission") == "handed-over", report

    published = site.publish(generation_bundle(site, 2, broken=True))
    assert published.status_code == 200, published.text
    wait_replicas(site, context, 1, failed=True)
    for name, status in replica_status(site, context).items():
        assert status["counter"] == 1, (name, status)
        # the refused set is named (its policy-set revision), and it is not the one in force
        assert status["last_failed_revision"], (name, status)
        assert status["last_failed_revision"] != status["policies"], (name, status)
        print(f"{name}: last_failure {status['last_failure'][:300]}", flush=True)
        assert "no_such_function" in status["last_failure"], status
    refused, said = review(site, "gen-zero-again", "0")
    assert not refused, said
    assert "[generation] generation 1 only" in said, said  # generation 1 still in force
    assert review(site, "gen-one-again", "1")[0]

    assert set(restarts(site).values()) == {0}, restarts(site)
    history = chartrelease.helm("history", RELEASE, "-n", NAMESPACE, "-o", "json", kubeconfig=site.cluster.kubeconfig)
    assert len(json.loads(history.stdout)) == 1  # no helm upgrade on the way
