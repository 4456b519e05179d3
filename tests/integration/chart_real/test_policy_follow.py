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

import base64
import json
import shutil
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers import chartrelease
from localpeers.admissionrelease import drop_namespace, fresh_namespace, webhook_service, workload_pod
from localpeers.chartrelease import ClusterImages
from localpeers.chartsyncer import GROUP, DistributionSite, distribution_site
from localpeers.nodeimages import TOOLS_IMAGE
from localpeers.realcluster import RealCluster
from tests.support.policy_generations import generation_dir

pytestmark = pytest.mark.integration

NAMESPACE, RELEASE = "pf-system", "et"
WORKLOADS = "pf-workloads"
#: the follower reads every 5 s; the syncer long-polls the hub: well inside this, or the plane is broken
PICKUP_DEADLINE_S = 60.0


def generation_bundle(site: DistributionSite, k: int, *, broken: bool = False) -> bytes:
    """Generation k (counter k) signed by the site's trusted publisher for its group; `broken`: Rego OPA refuses,
    validly signed all the same."""
    root = site.work / "generations"
    repository = root / f"repo{k}"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(generation_dir(root, k, broken=broken), repository / "admission")
    files = build_files(read_repository(repository), counter=k, commit=f"{k:040x}", group=GROUP)
    return pack(sign_files(files, SigningKey(site.trusted.key_id, site.trusted.key)))


@pytest.fixture(scope="module")
def site(
    real_cluster: RealCluster, cluster_images: ClusterImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DistributionSite]:
    with distribution_site(
        real_cluster,
        cluster_images,
        tmp_path_factory.mktemp("follow"),
        namespace=NAMESPACE,
        release=RELEASE,
        install=False,
    ) as found:
        seconds = found.install({"webhook": {"enabled": True, "replicas": 2}})
        print(f"\ninstall_to_ready_s (webhook + syncer, no bundle in values): {seconds:.1f}", flush=True)
        yield found


@pytest.fixture(scope="module")
def workloads(real_cluster: RealCluster) -> Iterator[str]:
    yield fresh_namespace(real_cluster, WORKLOADS)
    drop_namespace(real_cluster, WORKLOADS)


def webhook_pods(site: DistributionSite) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=webhook"
    found = json.loads(site.cluster.kubectl("-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "json").stdout)
    return [p for p in found["items"] if p["metadata"].get("deletionTimestamp") is None]


def replica_context(site: DistributionSite) -> ssl.SSLContext:
    """Trust the chart's webhook CA; the certificate names the Service, not the pod IP asked here."""
    secret = json.loads(
        site.cluster.kubectl("-n", NAMESPACE, "get", "secret", f"{webhook_service(RELEASE)}-tls", "-o", "json").stdout
    )
    ca = site.work / "webhook-ca.pem"
    ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    return context


def replica_status(site: DistributionSite, context: ssl.SSLContext) -> dict[str, dict[str, Any]]:
    """pod name -> its /readyz answer, asked of each replica by pod IP."""
    answers: dict[str, dict[str, Any]] = {}
    for pod in webhook_pods(site):
        url = f"https://{pod['status']['podIP']}:8443/readyz"
        answer = httpx.get(url, verify=context, timeout=5)
        answers[pod["metadata"]["name"]] = answer.json()
    return answers


def wait_replicas(site: DistributionSite, context: ssl.SSLContext, counter: int, *, failed: bool = False) -> float:
    """Seconds until both replicas enforce `counter` (and, with `failed`, name a refused set)."""
    started = time.monotonic()
    while True:
        status = replica_status(site, context)
        if len(status) == 2 and all(
            s["counter"] == counter and (bool(s["last_failure"]) if failed else True) for s in status.values()
        ):
            return time.monotonic() - started
        if time.monotonic() - started > PICKUP_DEADLINE_S:
            logs = site.cluster.kubectl(
                "-n", NAMESPACE, "logs", "-l", "app.kubernetes.io/component=webhook", "-c", "webhook", "--tail=40",
                check=False,
            ).stdout  # fmt: skip
            raise AssertionError(f"replicas never enforced counter {counter}: {status}\n{logs}\n{site.syncer_log()}")
        time.sleep(0.2)


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
