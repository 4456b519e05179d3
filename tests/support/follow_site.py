"""The chart's webhook following the distribution plane on the real node, for tests/integration/chart_real and
benchmarks/bench_policy_swap.py: the hub, the syncer and 2 webhook replicas installed with no bundle in values,
bundles of generation k (tests/support/policy_generations.py) signed by the site's publisher, and each replica
asked what it enforces (its /readyz, by pod IP, TLS checked against the chart's CA)."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.admissionrelease import webhook_service
from localpeers.chartrelease import ClusterImages
from localpeers.chartsyncer import GROUP, DistributionSite, distribution_site
from localpeers.realcluster import RealCluster
from tests.support.policy_generations import generation_dir

REPLICAS = 2
#: the follower reads every 5 s; the syncer long-polls the hub: well inside this, or the plane is broken
PICKUP_DEADLINE_S = 60.0


@contextmanager
def following_site(
    cluster: RealCluster, images: ClusterImages, work: Path, *, namespace: str, release: str = "et"
) -> Iterator[tuple[DistributionSite, float]]:
    """The site with the webhook (2 replicas) and the syncer in one release, no bundle in values; and the
    seconds to every pod Ready."""
    with distribution_site(cluster, images, work, namespace=namespace, release=release, install=False) as site:
        seconds = site.install({"webhook": {"enabled": True, "replicas": REPLICAS}})
        yield site, seconds


def generation_bundle(site: DistributionSite, k: int, *, broken: bool = False) -> bytes:
    """Generation k (counter k) signed by the site's trusted publisher for its group; `broken`: Rego OPA refuses,
    validly signed all the same."""
    root = site.work / "generations"
    repository = root / f"repo{k}"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(generation_dir(root, k, broken=broken), repository / "admission")
    files = build_files(read_repository(repository), counter=k, commit=f"{k:040x}", group=GROUP)
    return pack(sign_files(files, SigningKey(site.trusted.key_id, site.trusted.key)))


def webhook_pods(site: DistributionSite) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={site.release},app.kubernetes.io/component=webhook"
    found = json.loads(site.cluster.kubectl("-n", site.namespace, "get", "pods", "-l", selector, "-o", "json").stdout)
    return [p for p in found["items"] if p["metadata"].get("deletionTimestamp") is None]


def replica_context(site: DistributionSite) -> ssl.SSLContext:
    """Trust the chart's webhook CA; the certificate names the Service, not the pod IP asked here."""
    secret = json.loads(
        site.cluster.kubectl(
            "-n", site.namespace, "get", "secret", f"{webhook_service(site.release)}-tls", "-o", "json"
        ).stdout
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
    """Seconds until every replica enforces `counter` (and, with `failed`, names a refused set); the replicas'
    and the syncer's logs in the error past PICKUP_DEADLINE_S."""
    started = time.monotonic()
    while True:
        status = replica_status(site, context)
        if len(status) == REPLICAS and all(
            s["counter"] == counter and (bool(s["last_failure"]) if failed else True) for s in status.values()
        ):
            return time.monotonic() - started
        if time.monotonic() - started > PICKUP_DEADLINE_S:
            logs = site.cluster.kubectl(
                "-n", site.namespace, "logs", "-l", "app.kubernetes.io/component=webhook", "-c", "webhook",
                "--tail=40", check=False,
            ).stdout  # fmt: skip
            raise AssertionError(f"replicas never enforced counter {counter}: {status}\n{logs}\n{site.syncer_log()}")
        time.sleep(0.1)
