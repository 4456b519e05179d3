"""The cluster's identity from the node agent, on the real node: no Secret holds an SVID.

The node's TPM (a host swtpm on the node's address) enrolls with the `site=lab` claim; `trustctl fleet cluster
add edge-node --site lab --namespace ... --release ... --ttl 60` gives the syncer's and the webhook's service
accounts the cluster's SPIFFE ID under the site alias; the release is installed with the node agent alone, then
upgraded with the syncer and the webhook (2 replicas) on: both take their X.509-SVIDs from the agent's Workload
API through the chart's read-only hostPath. The syncer applies a bundle; the hub's rollout status (read with
`trustctl policy rollout status --json`, as an operator) shows each webhook replica's admission revision,
reported by the replica itself with that SVID. With a 60 s lifetime the agent renews at about half of it: after
the first SVID has expired, both pods still reach the hub on new connections (the webhook's heartbeats, a second
bundle applied), each logged its rotations, and no container restarted.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509

from localpeers.chartrelease import ClusterImages
from localpeers.chartsyncer import CLUSTER, GROUP, DistributionSite, deny_all_but, distribution_site
from localpeers.nodeagent import node_agent_host
from localpeers.realcluster import RealCluster
from localpeers.swtpm import SoftwareTPMFactory
from tests.integration.realcluster.workloads import namespace
from tests.support.policy_generations import generation_dir
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration

NAMESPACE = "et-ident"
RELEASE = "et"
TTL_S = 60
WORKLOADS = "et-ident-work"
COMPONENTS = ("syncer", "webhook")
T = TypeVar("T")


def wait(what: str, check: Callable[[], T | None], timeout_s: float, diagnose: Callable[[], str]) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout_s}s:\n{diagnose()}")
        time.sleep(1)


def pods(cluster: RealCluster, component: str) -> list[dict[str, Any]]:
    listed = json.loads(
        cluster.kubectl(
            "-n", NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/component={component}", "-o", "json"
        ).stdout
    )
    return [p for p in listed["items"] if p["metadata"].get("deletionTimestamp") is None]


def restarts(pod: dict[str, Any]) -> dict[str, int]:
    return {s["name"]: s["restartCount"] for s in pod["status"].get("containerStatuses", [])}


def svids_in_secrets(cluster: RealCluster) -> list[str]:
    """Every Secret key in the namespace holding a leaf certificate with a SPIFFE ID (an SVID)."""
    found = []
    listed = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "secrets", "-o", "json").stdout)
    for secret in listed["items"]:
        for key, value in (secret.get("data") or {}).items():
            text = base64.b64decode(value)
            if b"-----BEGIN CERTIFICATE-----" not in text:
                continue
            for cert in x509.load_pem_x509_certificates(text):
                if _is_ca(cert):  # the hub's roots name the trust domain: a root, no one's identity
                    continue
                try:
                    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                except x509.ExtensionNotFound:
                    continue
                if any(u.startswith("spiffe://") for u in names.get_values_for_type(x509.UniformResourceIdentifier)):
                    found.append(f"{secret['metadata']['name']}/{key}")
    return found


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def logs(cluster: RealCluster, pod: dict[str, Any], container: str) -> str:
    name = pod["metadata"]["name"]
    return cluster.kubectl("-n", NAMESPACE, "logs", name, "-c", container, check=False).stdout


def rollout_status(site: DistributionSite, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert trustctl(["policy", "rollout", "status", GROUP, "--json", *site.operator_argv()]) == 0
    view: dict[str, Any] = json.loads(capsys.readouterr().out)
    return view


def test_the_syncer_and_the_webhook_run_on_svids_from_the_node_agent_across_rotations(
    real_cluster: RealCluster,
    cluster_images: ClusterImages,
    tpm_factory: SoftwareTPMFactory,
    ek_roots: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = real_cluster
    try:
        _run(cluster, cluster_images, tpm_factory, ek_roots, tmp_path, capsys)
    finally:
        cluster.kubectl("delete", "namespace", WORKLOADS, "--ignore-not-found", "--wait=true", check=False)


def _run(
    cluster: RealCluster,
    cluster_images: ClusterImages,
    tpm_factory: SoftwareTPMFactory,
    ek_roots: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with (
        node_agent_host(tpm_factory, tmp_path, name="ident") as host,
        distribution_site(
            cluster, cluster_images, tmp_path / "site", namespace=NAMESPACE, release=RELEASE,
            node=host, ek_roots=ek_roots, svid_ttl_s=TTL_S, install=False,
        ) as site,
    ):  # fmt: skip
        site.install({"webhook": {"enabled": True, "replicas": 2}})
        policy = site.running_hub().hub.policy
        assert policy is not None

        def diagnose() -> str:
            found = [
                json.dumps({p["metadata"]["name"]: restarts(p) for p in pods(cluster, c)})
                for c in ("syncer", "webhook")
            ]
            for pod in pods(cluster, "syncer") + pods(cluster, "webhook"):
                container = pod["metadata"]["labels"]["app.kubernetes.io/component"]
                found.append(f"{pod['metadata']['name']}:\n{logs(cluster, pod, container)[-2000:]}")
            return "\n".join(found)

        syncer, webhooks = pods(cluster, "syncer"), pods(cluster, "webhook")
        assert len(syncer) == 1
        assert len(webhooks) == 2
        for pod in syncer + webhooks:
            container = pod["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env["SPIFFE_ENDPOINT_SOCKET"] == "unix:///run/spiffe/api.sock"
            volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "workload-api")
            assert volume["hostPath"] == {"path": str(host.socket_dir), "type": "Directory"}
            assert not any(a.startswith("--svid") for a in container["args"])
        assert svids_in_secrets(cluster) == []  # only the hub's roots and the webhook's serving certificate
        running_since = time.time()

        # the syncer, on its Workload API SVID, applies a bundle
        namespace(cluster, WORKLOADS)
        # with its admission policies: the webhook follows the syncer, and refuses a bundle that has none
        admission = generation_dir(tmp_path / "generations", 1)
        blob = site.trusted.bundle(
            deny_all_but(WORKLOADS, server={"app": "s"}, peer={"app": "p"}), counter=1, admission=admission
        )
        assert site.publish(blob).status_code == 200
        report = site.wait_report(lambda r: r.get("result") == "applied", timeout_s=90)
        assert report["revision"].startswith("000000000001-")

        # each webhook replica reports, as the cluster, what it enforces; the operator's trustctl shows it
        names = sorted(p["metadata"]["name"] for p in webhooks)
        wait(
            "both replicas at the hub", lambda: sorted(policy.clusters.replicas(CLUSTER)) == names or None, 90, diagnose
        )
        view = rollout_status(site, capsys)
        assert sorted(view["clusters"][CLUSTER]["admission"]["replicas"]) == names
        assert view["clusters"][CLUSTER]["networkpolicies"] == {"revision": report["revision"], "result": "applied"}
        # the syncer hands the bundle to the webhook: the cluster counts as applied once both replicas enforce it
        view = wait(
            "the cluster applied on both planes",
            lambda: (found := rollout_status(site, capsys))["waves"][0]["applied"] == [CLUSTER] and found,
            60,
            diagnose,
        )
        admission = view["clusters"][CLUSTER]["admission"]
        assert admission["handoff"] is True
        assert admission["state"] == "applied"
        for pod in names:
            replica = admission["replicas"][pod]
            assert (replica["counter"], replica["state"]) == (1, "applied"), replica
            assert replica["revision"], replica

        # rotations: the first SVIDs (issued before the pods ran) expire at most TTL_S after running_since
        expired_at = running_since + TTL_S
        wait(
            "a webhook heartbeat from each replica after the first SVID expired",
            lambda: (
                (
                    all(t > expired_at + 5 for t in policy.clusters.heard(CLUSTER).values())
                    and len(policy.clusters.heard(CLUSTER)) == 2
                )
                or None
            ),
            TTL_S + 90,
            diagnose,
        )
        second = site.trusted.bundle(
            deny_all_but(WORKLOADS, server={"app": "s2"}, peer={"app": "p"}),
            counter=2,
            admission=generation_dir(tmp_path / "generations", 2),
        )
        assert site.publish(second).status_code == 200
        applied = site.wait_report(lambda r: r.get("revision", "").startswith("000000000002-"), timeout_s=90)
        assert applied["result"] == "applied"
        for pod in pods(cluster, "syncer") + pods(cluster, "webhook"):
            container = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            assert restarts(pod) == {c: 0 for c in restarts(pod)}, diagnose()
            assert "X.509-SVID rotated" in logs(cluster, pod, container), diagnose()
