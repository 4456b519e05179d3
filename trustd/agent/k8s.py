"""Workload attestation on Kubernetes: which pod a calling process belongs to, and so its namespace, service
account, name and labels, as SPIRE's k8s workload attestor names them (`k8s:ns:shop`, `k8s:sa:web`, ...).

The kernel says which cgroup the caller's process is in; the container runtime puts the pod's UID in that path
(`.../kubepods-besteffort-pod<uid>.slice/...` with the systemd driver, `.../kubepods/besteffort/pod<uid>/...`
with cgroupfs). The pod is then looked up among this node's pods on the API server, which is the authority on
its namespace and service account; a process in no pod gets no k8s selectors.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from edgetrust._internal import kube as kubeapi
from trustd.errors import TrustdError

_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
CACHE_S = 5.0
#: pods on one node, at most (the kubelet's default is 110): a longer list is refused, never cut
MAX_NODE_PODS = 2_000


class KubeAttestorError(TrustdError):
    code = "k8s_attestation_failed"


def pod_uid(cgroup: str) -> str | None:
    for line in cgroup.splitlines():
        found = _POD_UID.search(line)
        if found:
            return found.group(1).replace("_", "-")
    return None


class KubeAttestor:
    def __init__(
        self, *, node: str, url: str, token_file: Path, ca_file: Path, proc_root: Path = Path("/proc")
    ) -> None:
        """The API server at `url`, trusted through `ca_file`; the token file is followed as the kubelet
        rotates it (edgetrust/_internal/kube.py)."""
        self._node = node
        self.proc_root = proc_root
        self._api = kubeapi.KubeConnection(
            kubeapi.Direct(url, token_file=token_file, ca_file=ca_file), timeout_s=5, user_agent="edgetrust-agent"
        )
        self._pods: dict[str, dict[str, Any]] = {}
        self._listed = 0.0

    async def _pod(self, uid: str) -> dict[str, Any] | None:
        if uid not in self._pods or time.monotonic() - self._listed > CACHE_S:
            try:
                listed = await self._api.list_all(
                    "/api/v1/pods",
                    query=[("fieldSelector", f"spec.nodeName={self._node}")],
                    max_items=MAX_NODE_PODS,
                    what="listing this node's pods",
                )
            except kubeapi.KubeTransportError as exc:
                raise KubeAttestorError(f"the API server is unreachable: {exc}") from exc
            except kubeapi.KubeStatusError as exc:
                raise KubeAttestorError(f"listing this node's pods was refused ({exc.status})") from exc
            except kubeapi.KubeAccessError as exc:
                raise KubeAttestorError(str(exc)) from exc
            pods: dict[str, dict[str, Any]] = {}
            for pod in listed.items:
                metadata = pod.get("metadata")
                if isinstance(metadata, dict) and isinstance(metadata.get("uid"), str):
                    pods[metadata["uid"]] = pod
            self._pods = pods
            self._listed = time.monotonic()
        return self._pods.get(uid)

    async def selectors(self, pid: int, connected_in: str | None = None) -> frozenset[str]:
        """The pod's selectors, from the caller's cgroup now; when the front recorded the cgroup it connected
        from (`connected_in`), both must be the same: a pid now held by a process elsewhere (the caller exited
        and its pid was reused, or it was moved out of its pod) names no pod."""
        try:
            cgroup = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:
            return frozenset()
        if connected_in is not None and cgroup != connected_in:
            return frozenset()
        uid = pod_uid(cgroup)
        if uid is None:
            return frozenset()
        pod = await self._pod(uid)
        if pod is None:
            return frozenset()
        metadata, spec = pod["metadata"], pod.get("spec", {})
        found = {
            f"k8s:ns:{metadata['namespace']}",
            f"k8s:sa:{spec.get('serviceAccountName', 'default')}",
            f"k8s:pod-name:{metadata['name']}",
            f"k8s:pod-uid:{uid}",
            f"k8s:node-name:{self._node}",
        }
        found.update(f"k8s:pod-label:{k}:{v}" for k, v in (metadata.get("labels") or {}).items())
        return frozenset(found)

    async def close(self) -> None:
        await self._api.aclose()
