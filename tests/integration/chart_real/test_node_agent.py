"""The chart's node agent DaemonSet on the real node, with the chart's securityContext as shipped.

This machine has no TPM: the node's TPM is a host swtpm listening on the node's address (198.18.255.1, the only
host address pods reach), its EK certificate from the test manufacturer the hub trusts. It is the test's stand-in
for /dev/tpmrm0, given to the chart as the TCTI `nodeAgent.tpm`; the measured boot is simulated (localpeers.simboot)
and its event log is where the chart reads the kernel's from (`nodeAgent.eventLog`). The hub (trustd) listens on the
node's address too, with the golden boot's reference values.

The golden node: the init container enrolls (the hub holds the node under its Kubernetes node name claim), the
agent becomes Ready, and a pod of a namespace an entry names fetches its X.509-SVID over the Workload API socket
(the host folder `nodeAgent.socketDir`), picked by its pod (k8s:* selectors), while a pod of another namespace
gets nothing. The tampered node (an attack: a patched bootloader) is refused by the hub, with the hub's reason in
the init container's log, and its agent never starts. It sits here, not in tests/security/: that folder's
conftest re-exports the integration fixtures, which would make a second session-wide `real_cluster` (one cluster
per machine).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localpeers.chartrelease import CHART, ChartReleaseError, ClusterImages, helm, install, merge_values, uninstall
from localpeers.hub import RunningHub, running_hub
from localpeers.nodeagent import (
    AGENT_UID,
    NodeAgentHost,
    container_rss_mib,
    diagnosis,
    node_agent_host,
    node_agent_pod,
    node_agent_values,
    trust_bundle_secret,
    wait_node_agent_ready,
)
from localpeers.nodeconfig import NODE_IP, NODE_NAME
from localpeers.realcluster import RealCluster
from localpeers.svid import issue_svid_files
from localpeers.swtpm import SoftwareTPMFactory
from tests.integration.realcluster.workloads import apply, namespace
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration

OPERATOR = "spiffe://edge.example/operator/admin"
NODE_ID = f"spiffe://edge.example/site/lab/node/{NODE_NAME}"
WORKLOAD_ID = "spiffe://edge.example/workload/shop-web"
#: a workload's fetch, run in its pod with the image's Python and py-spiffe (SPIFFE_ENDPOINT_SOCKET names the socket)
FETCH = """
import sys
from spiffe import WorkloadApiClient
client = WorkloadApiClient(default_timeout=10)
try:
    svid = client.fetch_x509_svid()
    print("svid", svid.spiffe_id, svid.leaf.issuer.rfc4514_string())
except Exception as error:
    print("refused", error)
    sys.exit(3)
finally:
    client.close()
"""


@pytest.fixture
def node_hub(real_cluster: RealCluster, ek_roots: Path, tmp_path: Path) -> Iterator[RunningHub]:
    """trustd on the node's address (it exists while the cluster runs), trusting the swtpm manufacturer."""
    with running_hub(
        tmp_path / "hub", ek_roots=ek_roots, listen_host=NODE_IP, server_ip_addresses=(NODE_IP,), operators=(OPERATOR,)
    ) as hub:
        yield hub


def _create_entry(hub: RunningHub, work: Path, spiffe_id: str, *selectors: str) -> None:
    cert, key = issue_svid_files(hub.hub.ca, OPERATOR, work / "operator")
    argv = ["fleet", "entry", "create", "--spiffe-id", spiffe_id, "--parent", NODE_ID, "--ttl", "600"]
    for selector in selectors:
        argv += ["--selector", selector]
    argv += ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key)]
    assert trustctl(argv) == 0


def _workload(image: str, name: str, ns: str, host: NodeAgentHost) -> dict[str, object]:
    """A hardened pod of the edgetrust image (Python, py-spiffe) with the agent's socket folder mounted."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "env": [{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///run/spiffe/api.sock"}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "spiffe", "mountPath": "/run/spiffe", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "spiffe", "hostPath": {"path": str(host.socket_dir), "type": "Directory"}}],
        },
    }


def _wait(what: str, check: Any, timeout_s: float, diagnose: Any) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout_s}s:\n{diagnose()}")
        time.sleep(1)


def _running(cluster: RealCluster, name: str, ns: str) -> bool:
    found = json.loads(cluster.kubectl("-n", ns, "get", "pod", name, "-o", "json").stdout)
    return bool(found.get("status", {}).get("phase") == "Running")


def _fetch(cluster: RealCluster, name: str, ns: str) -> str:
    # python3.11: the image has Debian's python3.11-minimal, without the python3 name
    done = cluster.kubectl("-n", ns, "exec", name, "--", "python3.11", "-c", FETCH, check=False, timeout_s=60)
    _last_fetch[:] = [(done.stdout + done.stderr).strip()]
    return _last_fetch[0]


_last_fetch: list[str] = []


def _condition(pod: dict[str, Any], kind: str) -> str:
    return next((c["status"] for c in pod["status"].get("conditions", []) if c["type"] == kind), "absent")


def _delete_namespaces(cluster: RealCluster, *names: str) -> None:
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", check=False, timeout_s=120)


def test_the_node_agent_enrolls_the_node_and_serves_its_pods(
    real_cluster: RealCluster,
    cluster_images: ClusterImages,
    tpm_factory: SoftwareTPMFactory,
    node_hub: RunningHub,
    tmp_path: Path,
) -> None:
    cluster, release, ns, shop, other = real_cluster, "na", "et-node-agent", "et-na-shop", "et-na-other"
    _create_entry(node_hub, tmp_path, WORKLOAD_ID, f"k8s:ns:{shop}", "k8s:sa:default")
    try:
        trust_bundle_secret(cluster, namespace(cluster, ns), node_hub.ca_bundle)
        with node_agent_host(tpm_factory, tmp_path, name="golden") as host:
            values = merge_values(cluster_images.helm_values(), node_agent_values(node_hub.url, host))
            started = time.monotonic()
            try:
                install(cluster, release, ns, values, work=tmp_path, timeout_s=90)
            except ChartReleaseError as error:
                raise AssertionError(f"{error}\n{diagnosis(cluster, ns, release)}") from error
            agent = wait_node_agent_ready(cluster, ns, release, timeout_s=60)
            print(f"\nnode agent Ready {time.monotonic() - started:.1f} s after helm install")
            assert _condition(agent, "Ready") == "True"
            # the chart's securityContext as shipped, for a TPM that is no device: not root, nothing to escalate
            spec = agent["spec"]
            assert spec["hostPID"] is True
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["runAsUser"] == AGENT_UID
            assert not any(v["name"] == "tpm" for v in spec["volumes"])
            for container in spec["initContainers"] + spec["containers"]:
                assert container["securityContext"] == {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                }, container["name"]
            pod = agent["metadata"]["name"]
            assert cluster.kubectl("-n", ns, "exec", pod, "-c", "agent", "--", "id", "-u").stdout.strip() == "65532"

            # enrolled by the init container, with the node's Kubernetes name as its node claim
            enroll_log = cluster.kubectl("-n", ns, "logs", pod, "-c", "enroll").stdout
            assert f"enrolled as {NODE_ID}" in enroll_log
            nodes = [d for d in node_hub.hub.store.devices() if d.claims.get("node") == NODE_NAME]
            assert [(d.spiffe_id, d.status, d.claims.get("site")) for d in nodes] == [(NODE_ID, "enrolled", "lab")]
            assert (host.state_dir / "svid" / "svid.pem").is_file()  # kept on the host: a restart renews

            image = cluster_images.references["edgetrust"]
            for name in (shop, other):
                namespace(cluster, name)
                apply(cluster, _workload(image, "web", name, host))
            for name in (shop, other):
                _wait(f"pod {name}/web Running", lambda n=name: _running(cluster, "web", n), 90, lambda: "")

            def agent_log() -> str:
                log = cluster.kubectl("-n", ns, "logs", pod, "-c", "agent", "--tail=40", check=False).stdout
                return f"last fetch: {_last_fetch}\nagent:\n{log}"

            # the agent polls its entries (every 30 s by default): the first fetches may come before it holds one
            fetched = _wait(
                "the workload's X.509-SVID",
                lambda: (out := _fetch(cluster, "web", shop)).startswith(f"svid {WORKLOAD_ID}") and out,
                120,
                agent_log,
            )
            assert fetched.startswith(f"svid {WORKLOAD_ID} ")
            for _ in range(3):
                assert _fetch(cluster, "web", shop).startswith(f"svid {WORKLOAD_ID}")
            refused = _fetch(cluster, "web", other)  # same uid, another pod: the pod decides, and no entry names it
            assert refused.startswith("refused"), refused
            assert "no identity issued" in refused, refused

            rss = container_rss_mib(node_agent_pod(cluster, ns, release), "agent")
            print(f"node agent container RSS (cgroup) after enrollment and 5 SVID fetches: {rss:.1f} MiB")
            assert rss > 1  # read from the container's own cgroup, not an empty one
    finally:
        _delete_namespaces(cluster, shop, other)
        uninstall(cluster, release, ns)


def test_a_tampered_boot_is_refused_and_the_agent_never_starts(
    real_cluster: RealCluster,
    cluster_images: ClusterImages,
    tpm_factory: SoftwareTPMFactory,
    node_hub: RunningHub,
    tmp_path: Path,
) -> None:
    cluster, release, ns = real_cluster, "na-tampered", "et-node-agent-tampered"
    try:
        trust_bundle_secret(cluster, namespace(cluster, ns), node_hub.ca_bundle)
        with node_agent_host(tpm_factory, tmp_path, name="tampered", tamper="bootloader") as host:
            values = merge_values(cluster_images.helm_values(), node_agent_values(node_hub.url, host))
            values_file = tmp_path / "values.json"
            values_file.write_text(json.dumps(values))
            # not --wait: this pod is never to be Ready
            helm(
                "upgrade",
                "--install",
                release,
                str(CHART),
                "-n",
                ns,
                "-f",
                str(values_file),
                kubeconfig=cluster.kubeconfig,
            )

            def failed_enrollment() -> dict[str, Any] | None:
                try:
                    pod = node_agent_pod(cluster, ns, release)
                except ChartReleaseError:  # the DaemonSet controller has not made it yet
                    return None
                for status in pod["status"].get("initContainerStatuses", []):
                    ended = status.get("state", {}).get("terminated") or status.get("lastState", {}).get("terminated")
                    if ended and ended.get("exitCode", 0) != 0:
                        return pod
                return None

            pod = _wait(
                "the init container's failure",
                failed_enrollment,
                120,
                lambda: cluster.kubectl("-n", ns, "get", "events", check=False).stdout,
            )
            name = pod["metadata"]["name"]

            def refused_log() -> str | None:
                """The failed attempt's log: the kubelet may already be restarting the init container, so the
                failed run is the current one or the previous one, depending on when we look."""
                for previous in ((), ("--previous",)):
                    done = cluster.kubectl("-n", ns, "logs", name, "-c", "enroll", *previous, check=False)
                    if "refused" in done.stdout or "PCR" in done.stdout:
                        return done.stdout
                return None

            log = _wait("the failed enrollment's log", refused_log, 60, lambda: diagnosis(cluster, ns, release))
            assert "PCR 4 (sha256)" in log, log  # the hub's reason: the bootloader's measurement
            assert "enrolled as" not in log

            pod = node_agent_pod(cluster, ns, release)
            assert _condition(pod, "Ready") == "False"
            assert _condition(pod, "Initialized") == "False"
            agent = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "agent")
            assert agent["ready"] is False
            assert set(agent["state"]) == {"waiting"}  # never started
            assert not [d for d in node_hub.hub.store.devices() if d.claims.get("node") == NODE_NAME]
            assert not (host.state_dir / "svid" / "svid.pem").exists()
            assert not host.socket.exists()
    finally:
        uninstall(cluster, release, ns)
