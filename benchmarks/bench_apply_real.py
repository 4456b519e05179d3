"""A bundle of 200 NetworkPolicies applied to a real kube-apiserver by the syncer's apply path, then the same
again (a no-change sync). Targets: <= 5 s for the 200; no API writes for the no-change sync.

The applier dry-runs every object before writing any (all or nothing), so the first apply is 400 requests.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localpeers.kube import running_kube_apiserver
from localpeers.tlsca import TestCA
from syncer.apply import apply_set, desired
from syncer.kube import KubeClient, KubeConfig

COUNT = 200


def policies() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"allow-app-{i:03d}", "namespace": "workloads"},
            "spec": {
                "podSelector": {"matchLabels": {"app": f"app-{i:03d}"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": 8000 + i}]}],
            },
        }
        for i in range(COUNT)
    ]


async def measure(config: KubeConfig) -> tuple[float, int, float, int]:
    client = KubeClient(config)
    wanted = desired(policies())
    start = time.perf_counter()
    first = await apply_set(client, wanted)
    apply_s = time.perf_counter() - start
    assert len(first.applied) == COUNT
    writes_before = client.writes
    start = time.perf_counter()
    again = await apply_set(client, wanted)
    noop_s = time.perf_counter() - start
    assert len(again.unchanged) == COUNT
    await client.aclose()
    return apply_s, len(first.applied), noop_s, client.writes - writes_before


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-apply-"))
    with running_kube_apiserver(work / "kube", TestCA(work / "ca")) as kube:
        with kube.client() as client:
            client.post("/api/v1/namespaces", json={"metadata": {"name": "workloads"}}).raise_for_status()
        apply_s, applied, noop_s, noop_writes = asyncio.run(measure(KubeConfig(kube.url, kube.token, kube.ca_file)))
    print(
        f"apply_real: {COUNT} NetworkPolicies, server-side apply, each dry-run first, on a real kube-apiserver + etcd"
    )
    print(f"{'case':<10} {'objects':>7} {'seconds':>8} {'writes':>6}")
    print(f"{'first':<10} {applied:>7} {apply_s:>8.2f} {applied:>6}")
    print(f"{'no-change':<10} {COUNT:>7} {noop_s:>8.2f} {noop_writes:>6}")
    print(
        "RESULT "
        + json.dumps({"bench": "apply_real", "metric": "seconds_200", "value": round(apply_s, 3), "unit": "s"})
    )
    print(
        "RESULT " + json.dumps({"bench": "apply_real", "metric": "noop_writes", "value": noop_writes, "unit": "count"})
    )


if __name__ == "__main__":
    main()
