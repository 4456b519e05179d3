"""10,000 simulated cluster agents come back together after a 60 s outage of the whole hub (three trustd replicas
behind HAProxy): how long until every agent has the bundle published at the return, and does the hub stay
responsive while they all reconnect?

The rig is bench_fleet_ha's (localpeers/hafleet.py): SoftHSM2 token, PostgreSQL, three `trustd serve` replicas,
HAProxy, and the real SyncAgent with the syncer's own retry pace (full jitter from 1 s, capped at
`syncer.agent.RETRY_CAP_S`, and the hub's Retry-After: `syncer.agent.pace`) in 4 worker processes.

The outage: all three replicas are killed with SIGKILL and started again 60 s later (same ports, same store), as
a crashed or redeployed hub. Killed, not frozen (SIGSTOP): with no replica up, HAProxy closes every new
connection at once, so each agent's try fails fast and the agents sit in their backoff; the storm at the return
is 10,000 new TLS handshakes spread by the jitter. A frozen hub would instead hold every connection open until
the agent's own timeout (wait + 10 s), and the kernel would queue the requests for the moment it thaws: a
different storm (of requests on connections already made), which this bench does not measure.

The hub has returned when HAProxy's health checks see all three replicas up; bundle 2 is published through
HAProxy at that moment. A prober sends GET /healthz through HAProxy every 50 ms (a new TLS connection each, as a
load balancer's or kubelet's probe) from the return until every agent has applied bundle 2.

Figures: converge_all_s (return -> every agent applied bundle 2; goal <= 30), healthz_p99_ms (goal <= 500), the
503s the agents were answered, failed probes, and the spread of the agents' reconnect times after the return
(the full jitter at work). AGENTS (env RECONNECT_STORM_AGENTS, default 10,000).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localpeers.fleetsim import percentile
from localpeers.hafleet import running_ha_fleet

AGENTS = int(os.environ.get("RECONNECT_STORM_AGENTS", "10000"))
WORKERS = 4
REPLICAS = 3
OUTAGE_S = 60.0
PROBE_EVERY_S = 0.05
CONVERGE_LIMIT_S = 180.0


class Prober(threading.Thread):
    """GET /healthz through the balancer every PROBE_EVERY_S, a new connection each time, until stopped."""

    def __init__(self, url: str, roots: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.roots = url, roots
        self.latencies_ms: list[float] = []
        self.statuses: dict[str, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        verify = ssl.create_default_context(cafile=str(self.roots))
        while not self.halt.is_set():
            started = time.perf_counter()
            try:
                status = str(httpx.get(f"{self.url}/healthz", verify=verify, timeout=5).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            took = time.perf_counter() - started
            self.latencies_ms.append(took * 1000)  # a failed probe counts with the time it took to fail
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.halt.wait(max(0.0, PROBE_EVERY_S - took))


def main() -> None:
    with running_ha_fleet(AGENTS, replicas=REPLICAS, workers=WORKERS) as rig:
        fleet = rig.fleet
        setup_s = rig.converge_first_bundle(AGENTS)
        held = rig.current()

        down_at = time.time()
        for replica in rig.replicas:
            replica.kill(signal.SIGKILL)
        fleet.drain(down_at + OUTAGE_S, label="outage")
        for replica in rig.replicas:
            replica.launch()
        for replica in rig.replicas:
            replica.wait_ready()
        deadline = time.time() + 30
        while not rig.all_up() and time.time() < deadline:
            time.sleep(0.02)
        returned_at = time.time()
        prober = Prober(rig.balancers[0].url, rig.roots)
        prober.start()
        rig.publish(2)
        fleet.drain(returned_at + CONVERGE_LIMIT_S, lambda: fleet.at(2) == AGENTS, "storm")
        prober.halt.set()
        prober.join()
        converged = fleet.at(2)
        stragglers = fleet.stragglers(2)
        converge = max(fleet.applied.values()) - returned_at if converged == AGENTS else None
        fleet.drain(time.time() + 2)
        took = [when - returned_at for name, when in fleet.applied.items() if fleet.counter[name] >= 2]
        back = sorted(when - returned_at for name, when, since in fleet.reconnects if since >= down_at - 1)
        reconnected = {name for name, when, since in fleet.reconnects if since >= down_at - 1}

    p99 = percentile(prober.latencies_ms, 99)
    print(
        f"reconnect_storm: {AGENTS} simulated clusters (real agent code and retry pace, in-memory apply) on "
        f"{REPLICAS} trustd replicas behind HAProxy ({len(rig.balancers)} instances, the agents shared out); "
        f"all replicas SIGKILLed, started again after {OUTAGE_S:.0f} s; "
        f"{WORKERS} agent processes"
    )
    print(f"   {rig.issued_s:.1f} s to issue {AGENTS} SVIDs on the token; {setup_s:.1f} s until all applied bundle 1")
    print(f"   connections per replica before the outage: {held}")
    print(f"   hub back {returned_at - down_at - OUTAGE_S:.2f} s after the restart began (all three UP in HAProxy)")
    if back:
        print(
            f"   {len(reconnected)} agents reconnected, after the return: first {back[0]:.2f} s, "
            f"p10 {percentile(back, 10):.2f} s, median {percentile(back, 50):.2f} s, "
            f"p90 {percentile(back, 90):.2f} s, last {back[-1]:.2f} s"
        )
    print(
        f"   /healthz probes: {len(prober.latencies_ms)}, answers {prober.statuses}; "
        f"p50 {percentile(prober.latencies_ms, 50):.1f} ms, max {max(prober.latencies_ms, default=0):.1f} ms"
    )
    print(
        f"   bundle 2 applied after the return: p10 {percentile(took, 10):.2f} s, p50 {percentile(took, 50):.2f} s, "
        f"p90 {percentile(took, 90):.2f} s, p99 {percentile(took, 99):.2f} s"
    )
    if converged != AGENTS:
        print(f"   not at bundle 2, by their latest sync: {stragglers}")
    print(f"{'agents':>7} {'applied':>7} {'converge_all_s':>14} {'healthz_p99_ms':>14} {'503s':>5} {'regressions':>11}")
    shown = f"{converge:.2f}" if converge is not None else f"not all ({CONVERGE_LIMIT_S:.0f} s)"
    print(f"{AGENTS:>7} {converged:>7} {shown:>14} {p99:>14.1f} {fleet.busy:>5} {len(fleet.regressions):>11}")
    failed_probes = sum(n for status, n in prober.statuses.items() if status != "200")
    results: tuple[tuple[str, float | None, str], ...] = (
        ("converge_all_s", converge, "s"),  # null: not every agent converged within the limit
        ("converged_agents", float(converged), "count"),
        ("healthz_p99_ms", p99, "ms"),
        ("healthz_failed", float(failed_probes), "count"),
        ("answers_503", float(fleet.busy), "count"),
        ("regressions", float(len(fleet.regressions)), "count"),
        ("reconnect_p50_s", percentile(back, 50), "s"),
        ("reconnect_p90_s", percentile(back, 90), "s"),
        ("reconnect_last_s", back[-1] if back else None, "s"),
    )
    for metric, value, unit in results:
        rounded = round(value, 2) if value is not None else None
        print("RESULT " + json.dumps({"bench": "reconnect_storm", "metric": metric, "value": rounded, "unit": unit}))


if __name__ == "__main__":
    main()
