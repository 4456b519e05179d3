"""The cluster's X.509-SVID across rotations, on the real node: the longest time the syncer or a webhook replica
held no valid SVID (goal 0), over at least ROTATIONS rotations of each.

The real path: the chart's node agent (a host swtpm on the node's address stands in for /dev/tpmrm0) enrolled
with `site=lab`, `trustctl fleet cluster add --ttl 60` (the shortest lifetime the hub accepts), then the syncer
and the webhook (2 replicas) taking their SVIDs from the agent's Workload API through `WorkloadSvid`, as the
chart installs them. Each pod logs every SVID it loads ("X.509-SVID rotated: <id>, valid from F until U", from
edgetrust/spiffe/workload.py, at the moment the new one is in the SSL context). For rotation i of a pod, loaded at
t_i, the time it held no valid SVID is
    max(0, t_i - U_{i-1})   (the previous one expired before the next was loaded)
  + max(0, F_i - t_i)       (the next one was loaded before it was valid)
and gap_s is the largest over every rotation of every pod (the first load of each pod has no predecessor and is
not counted; ROTATIONS + 1 loads are waited for so that ROTATIONS rotations are measured). Log times and
certificate times are read on one machine's clock; the certificates' seconds resolution bounds the figure.

Needs root and the real node (one per machine: run under `flock /tmp/edgetrust-realcluster.lock`), about 3-4
minutes.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localpeers import chartrelease
from localpeers.chartsyncer import distribution_site
from localpeers.nodeagent import node_agent_host
from localpeers.nodes import ek_roots_of
from localpeers.realcluster import RealCluster, running_real_cluster
from localpeers.swtpm import SoftwareTPMFactory

ROTATIONS = 10
TTL_S = 60
NAMESPACE = "bench-svid-rotation"
COMPONENTS = ("syncer", "webhook")
GOALS = {"gap_s": 0.0}
#: "2026-12-01 16:54:38,689 INFO edgetrust.spiffe.workload: X.509-SVID rotated: <id>, valid from <F> until <U>"
ROTATED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ edgetrust\.spiffe\.workload: X\.509-SVID rotated: (\S+), "
    r"valid from (\S+) until (\S+)$",
    re.M,
)


def loads(text: str) -> list[tuple[float, float, float]]:
    """(loaded at, valid from, valid until) of every SVID a pod's log says it loaded, in order."""
    found = []
    for at, _spiffe_id, valid_from, valid_until in ROTATED.findall(text):
        loaded = datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
        found.append(
            (loaded, datetime.fromisoformat(valid_from).timestamp(), datetime.fromisoformat(valid_until).timestamp())
        )
    return found


def gaps(found: list[tuple[float, float, float]]) -> list[float]:
    """The time without a valid SVID at each rotation (see the module)."""
    return [
        max(0.0, loaded - before[2]) + max(0.0, valid_from - loaded)
        for before, (loaded, valid_from, _until) in itertools.pairwise(found)
    ]


def pod_logs(cluster: RealCluster) -> dict[str, str]:
    """pod name -> its syncer's or webhook's log."""
    found = {}
    for component in COMPONENTS:
        listed = json.loads(
            cluster.kubectl(
                "-n", NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/component={component}", "-o", "json"
            ).stdout
        )
        for pod in listed["items"]:
            name = pod["metadata"]["name"]
            found[name] = cluster.kubectl("-n", NAMESPACE, "logs", name, "-c", component, check=False).stdout
    return found


def restarts(cluster: RealCluster) -> int:
    listed = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "json").stdout)
    return sum(s["restartCount"] for p in listed["items"] for s in p["status"].get("containerStatuses", []))


def measure(work: Path) -> dict[str, Any]:
    factory = SoftwareTPMFactory(work / "manufacturer")
    factory.provision("first")  # makes the manufacturer's root
    roots = ek_roots_of(factory, work / "ek-roots")
    with running_real_cluster(work / "cluster") as cluster:
        images = chartrelease.load_images(cluster)
        with (
            node_agent_host(factory, work, name="bench-rotation") as host,
            distribution_site(
                cluster, images, work / "site", namespace=NAMESPACE, node=host, ek_roots=roots,
                svid_ttl_s=TTL_S, install=False,
            ) as site,
        ):  # fmt: skip
            site.install({"webhook": {"enabled": True, "replicas": 2}})
            started = time.monotonic()
            deadline = started + TTL_S * ROTATIONS  # renewals come at about a fifth to a half of the lifetime
            while True:
                logs = pod_logs(cluster)
                counted = {pod: loads(text) for pod, text in logs.items()}
                if len(counted) == 3 and all(len(found) > ROTATIONS for found in counted.values()):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"fewer than {ROTATIONS + 1} SVID loads per pod: { {p: len(f) for p, f in counted.items()} }"
                    )
                time.sleep(5)
            waited = time.monotonic() - started
            restarted = restarts(cluster)
    per_pod = {pod: gaps(found) for pod, found in counted.items()}
    return {"per_pod": per_pod, "waited_s": waited, "restarts": restarted}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-svid-rotation-") as tmp:
        measured = measure(Path(tmp))
    per_pod: dict[str, list[float]] = measured["per_pod"]
    gap = max(max(found) for found in per_pod.values())
    rotations = min(len(found) for found in per_pod.values())
    print(f"SVID ttl {TTL_S} s; {measured['waited_s']:.0f} s of rotations; container restarts: {measured['restarts']}")
    print(f"{'pod':<40} {'rotations':>9} {'max gap s':>10}")
    for pod, found in sorted(per_pod.items()):
        print(f"{pod:<40} {len(found):>9} {max(found):>10.3f}")
    results = {"gap_s": (gap, "s"), "rotations": (float(rotations), "count")}
    print(f"{'metric':<12} {'value':>8} {'unit':<6} {'goal':>6}")
    for metric, (value, unit) in results.items():
        goal = GOALS.get(metric)
        print(f"{metric:<12} {value:>8.3f} {unit:<6} {'' if goal is None else f'<= {goal:g}':>6}")
    for metric, (value, unit) in results.items():
        print(
            "RESULT " + json.dumps({"bench": "svid_rotation", "metric": metric, "value": round(value, 3), "unit": unit})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
