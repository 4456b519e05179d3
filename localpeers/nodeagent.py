"""The chart's node agent on the real cluster: the node's TPM, its boot, the host folders the DaemonSet mounts, the
values that point the chart at them, and the memory its container uses.

This machine has no TPM, so the node's TPM is a host swtpm (localpeers/swtpm.py, its EK certificate signed by the
test manufacturer) listening on the node's address, the only host address pods reach: the stand-in for
/dev/tpmrm0, given to the chart as a TCTI (`nodeAgent.tpm`). swtpm has no firmware, so the measured boot is
simulated (localpeers/simboot.py) and its event log written where the kernel's would be read from
(`nodeAgent.eventLog`). With a TCTI that is no device the agent runs as uid 65532, so its host folders are made
for that uid here (the chart's README asks the same of an operator).

Used by tests/integration/chart_real/test_node_agent.py and the chart benchmark (`node_agent_values`,
`container_rss_mib`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.device import TPMDevice
from localpeers.chartrelease import ChartReleaseError
from localpeers.hub import GOLDEN_BANKS
from localpeers.nodeconfig import NODE_IP
from localpeers.realcluster import RealCluster
from localpeers.simboot import TAMPERED, boot_events, measure_boot
from localpeers.swtpm import SoftwareTPM, SoftwareTPMFactory

#: the image's user (localpeers/images.py), which the chart's agent runs as when its TPM is no device
AGENT_UID = 65532
#: where the kubelet's cgroupfs driver puts containers (cgroup v1 memory hierarchy, then a unified v2 one)
_CGROUP_ROOTS = (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup"))
_QOS = ("", "burstable", "besteffort")


@dataclass(frozen=True)
class NodeAgentHost:
    """What the node agent finds on its host: a running TPM, the boot's event log, and its two folders."""

    tpm: SoftwareTPM
    event_log: Path
    state_dir: Path
    socket_dir: Path

    @property
    def socket(self) -> Path:
        return self.socket_dir / "api.sock"


def _agent_dir(path: Path, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, AGENT_UID, AGENT_UID)
    path.chmod(mode)
    return path


@contextmanager
def node_agent_host(
    factory: SoftwareTPMFactory, workdir: Path, *, name: str, tamper: str | None = None
) -> Iterator[NodeAgentHost]:
    """A swtpm on the node's address, booted (the golden boot, or one stage changed: a key of simboot.TAMPERED),
    with its event log and the agent's folders under `workdir`; the swtpm is stopped on exit."""
    events = TAMPERED[tamper]() if tamper else boot_events()
    tpm = factory.start(name, host=NODE_IP)
    try:
        with TPMDevice(tpm.tcti) as device:
            log = measure_boot(device, events, GOLDEN_BANKS)
        event_log = workdir / f"{name}-event-log.bin"
        event_log.write_bytes(log)
        event_log.chmod(0o644)  # the kernel's is root's; this agent runs as 65532
        yield NodeAgentHost(
            tpm=tpm,
            event_log=event_log,
            state_dir=_agent_dir(workdir / f"{name}-state", 0o700),
            socket_dir=_agent_dir(workdir / f"{name}-sockets", 0o755),  # workloads (other uids) traverse it
        )
    finally:
        tpm.stop()


def node_agent_values(
    hub_url: str, host: NodeAgentHost, *, site: str = "lab", device_class: str = "edge-gateway"
) -> dict[str, Any]:
    """Chart values for the node agent alone (webhook and syncer off) on this host's TPM; merge the images'
    values (ClusterImages.helm_values) under them."""
    return {
        "webhook": {"enabled": False},
        "syncer": {"enabled": False},
        "nodeAgent": {
            "enabled": True,
            "hub": hub_url,
            "site": site,
            "deviceClass": device_class,
            "tpm": host.tpm.tcti,
            "eventLog": str(host.event_log),
            "stateDir": str(host.state_dir),
            "socketDir": str(host.socket_dir),
        },
    }


def trust_bundle_secret(
    cluster: RealCluster, namespace: str, bundle: Path, name: str = "edgetrust-trust-bundle"
) -> None:
    """The Secret the chart's `trustBundleSecret` names: the hub's roots (key bundle.pem)."""
    cluster.kubectl("-n", namespace, "create", "secret", "generic", name, f"--from-file=bundle.pem={bundle}")


def node_agent_pod(cluster: RealCluster, namespace: str, release: str) -> dict[str, Any]:
    """The release's node agent pod (one node, so one pod)."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=node-agent"
    listed = json.loads(cluster.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout)
    pods: list[dict[str, Any]] = listed["items"]
    if len(pods) != 1:
        raise ChartReleaseError(f"expected one node agent pod of {release} in {namespace}, found {len(pods)}")
    return pods[0]


def wait_node_agent_ready(cluster: RealCluster, namespace: str, release: str, timeout_s: float = 240) -> dict[str, Any]:
    """The node agent pod, once Ready. `helm --wait` is not enough for a DaemonSet: helm may look before the
    controller has counted the node (desired 0, so "ready") and return with no pod yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pod = node_agent_pod(cluster, namespace, release)
        except ChartReleaseError:
            pod = None  # not made yet
        if pod is not None and any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
        ):
            return pod
        if time.monotonic() > deadline:
            raise ChartReleaseError(
                f"node agent of {release} not Ready after {timeout_s}s:\n{diagnosis(cluster, namespace, release)}"
            )
        time.sleep(0.5)


def diagnosis(cluster: RealCluster, namespace: str, release: str) -> str:
    """The node agent pod's status, its containers' last log lines (the previous run's too) and the events."""
    try:
        pod = node_agent_pod(cluster, namespace, release)
    except ChartReleaseError as error:
        return str(error)
    name = pod["metadata"]["name"]
    found = [json.dumps(pod.get("status"), indent=1)]
    for container in ("enroll", "agent"):
        for previous in ((), ("--previous",)):
            done = cluster.kubectl("-n", namespace, "logs", name, "-c", container, "--tail=30", *previous, check=False)
            found.append(f"{container} {' '.join(previous)}:\n{done.stdout}{done.stderr}")
    events = cluster.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False)
    return "\n".join([*found, events.stdout[-3000:]])


def container_rss_mib(pod: dict[str, Any], container: str) -> float:
    """A running container's resident anonymous memory, read from its memory cgroup (`total_rss` in cgroup v1,
    `anon` in v2): what the container's limit is charged for, page cache aside."""
    uid = pod["metadata"]["uid"]
    statuses = pod.get("status", {}).get("containerStatuses", [])
    ids = [s.get("containerID", "") for s in statuses if s.get("name") == container]
    if not ids or "://" not in ids[0]:
        raise ChartReleaseError(f"container {container} of pod {pod['metadata']['name']} has not started")
    container_id = ids[0].split("://", 1)[1]
    for root in _CGROUP_ROOTS:
        for qos in _QOS:
            stat = root / "kubepods" / qos / f"pod{uid}" / container_id / "memory.stat"
            if stat.is_file():
                fields = dict(line.split() for line in stat.read_text().splitlines() if line.count(" ") == 1)
                value = fields.get("total_rss", fields.get("anon"))
                if value is not None:
                    return int(value) / (1024 * 1024)
    raise ChartReleaseError(f"no memory cgroup for container {container_id[:12]} of pod {uid} under {_CGROUP_ROOTS}")
