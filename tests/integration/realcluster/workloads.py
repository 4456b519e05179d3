"""Pods, Services and probes for the real-cluster tests, built from the local tools image (busybox `nc`).

A server pod answers every TCP connection on port 8080 with its own name (`nc -ll -e /bin/hostname`), so a probe
that prints a name proves which pod it reached; a probe is `nc` run in a client pod with `kubectl exec`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from localpeers.nodeimages import TOOLS_IMAGE
from localpeers.realcluster import RealCluster

PORT = 8080


def namespace(cluster: RealCluster, name: str) -> str:
    """A fresh namespace, once the controller manager has made its default service account."""
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no default service account in {name}"
        time.sleep(0.5)
    return name


def apply(cluster: RealCluster, manifest: dict[str, object]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def pod(name: str, ns: str, labels: dict[str, str], command: list[str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": TOOLS_IMAGE, "imagePullPolicy": "Never", "command": command}],
        },
    }


@dataclass(frozen=True)
class RunningPod:
    name: str
    namespace: str
    ip: str


def start_pod(cluster: RealCluster, manifest: dict[str, object], timeout_s: float = 90) -> RunningPod:
    """Create the pod and wait until it is Running with an IP (its events on timeout)."""
    apply(cluster, manifest)
    meta = manifest["metadata"]
    assert isinstance(meta, dict)
    name, ns = str(meta["name"]), str(meta["namespace"])
    deadline = time.monotonic() + timeout_s
    while True:
        found = json.loads(cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)
        status = found.get("status", {})
        if status.get("phase") == "Running" and status.get("podIP"):
            return RunningPod(name, ns, status["podIP"])
        if time.monotonic() > deadline:
            events = cluster.kubectl("get", "events", "-n", ns, check=False).stdout
            raise AssertionError(f"pod {ns}/{name} not Running after {timeout_s}s: {status}\n{events}")
        time.sleep(0.3)


def server(cluster: RealCluster, name: str, ns: str, labels: dict[str, str] | None = None) -> RunningPod:
    return start_pod(
        cluster, pod(name, ns, {"app": name, **(labels or {})}, ["nc", "-ll", "-p", str(PORT), "-e", "/bin/hostname"])
    )


def client(cluster: RealCluster, name: str, ns: str, labels: dict[str, str] | None = None) -> RunningPod:
    return start_pod(cluster, pod(name, ns, {"app": name, **(labels or {})}, ["sleep", "3600"]))


def probe(
    cluster: RealCluster, source: RunningPod, address: str, port: int = PORT, wait_s: int = 2
) -> subprocess.CompletedProcess[str]:
    """`nc` from the source pod to address:port: stdout is the name of the server pod reached, if any."""
    return cluster.kubectl(
        "exec", source.name, "-n", source.namespace, "--", "nc", f"-w{wait_s}", address, str(port),
        check=False, timeout_s=30,
    )  # fmt: skip


PEER_LABELS = {"role": "peer"}


@contextmanager
def server_peer_stranger(cluster: RealCluster, name: str) -> Iterator[dict[str, RunningPod]]:
    """A fresh namespace with three pods: `server` (answers with its name), `peer` (labelled role=peer, the one an
    allow rule names) and `stranger`; the namespace is deleted on exit."""
    ns = namespace(cluster, name)
    try:
        yield {
            "server": server(cluster, "server", ns),
            "peer": client(cluster, "peer", ns, PEER_LABELS),
            "stranger": client(cluster, "stranger", ns),
        }
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def reaches(cluster: RealCluster, source: RunningPod, target: RunningPod) -> bool:
    """Whether the source pod's connection got the target pod's own answer (its name)."""
    answer = probe(cluster, source, target.ip, wait_s=1)
    return answer.returncode == 0 and answer.stdout.strip() == target.name
