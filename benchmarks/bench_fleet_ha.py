"""10,000 simulated cluster agents against three trustd replicas behind HAProxy, one replica killed (SIGKILL) in the
middle of a rollout: does the rollout complete, and does any cluster go back a revision?

The rig (localpeers/hafleet.py): one SoftHSM2 token with the trust made once (`trustd ca init`), one PostgreSQL,
three `trustd serve` replicas on both, HAProxy in front (TLS passed through, round robin, health checks). The agents
are the real SyncAgent with the syncer's own retry pace (localpeers/fleetsim.py), in 4 worker processes, and reach
the hub through HAProxy only.

Bundle 1 is published and every agent applies it (the fleet in its steady state: each agent in a long poll).
Then bundle 2 is published; when half of the agents have applied it, the replica holding the most connections
(HAProxy's stats, `scur`) is killed with SIGKILL. Its agents lose their long polls, back off (full jitter) and
reconnect through HAProxy to the two others; the rollout's waves advance from reports that reach either survivor.

Figures: converge_all_s (publish of bundle 2 -> every agent applied it; goal <= 30), regressions (agents that
applied a lower revision after a higher one, or were served an older bundle than the one they held, which the
rollback guard refuses: counted from what the agents saw; goal 0), replicas (3), killed (1); also the agents that
had to reconnect and the 503s they were answered. AGENTS (env FLEET_HA_AGENTS, default 10,000).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localpeers.fleetsim import percentile
from localpeers.hafleet import running_ha_fleet

AGENTS = int(os.environ.get("FLEET_HA_AGENTS", "10000"))
WORKERS = 4
REPLICAS = 3
CONVERGE_LIMIT_S = 180.0


def main() -> None:
    with running_ha_fleet(AGENTS, replicas=REPLICAS, workers=WORKERS) as rig:
        fleet = rig.fleet
        setup_s = rig.converge_first_bundle(AGENTS)
        before_kill = dict(rig.current())

        published_at = rig.publish(2)
        fleet.drain(time.time() + CONVERGE_LIMIT_S, lambda: fleet.at(2) >= AGENTS / 2, "to 50 %")
        held = rig.current()
        victim = max(rig.replicas, key=lambda r: held.get(r.name, 0))
        dialled = rig.counts()
        killed_at = time.time()
        victim.kill(signal.SIGKILL)
        half_s = killed_at - published_at
        fleet.drain(published_at + CONVERGE_LIMIT_S, lambda: fleet.at(2) == AGENTS, "converging after the kill")
        converged = fleet.at(2)
        stragglers = fleet.stragglers(2)
        converge = max(fleet.applied.values()) - published_at if converged == AGENTS else None
        fleet.drain(time.time() + 2)  # late events (a regression would come after the apply)
        took = [when - published_at for name, when in fleet.applied.items() if fleet.counter[name] >= 2]
        reconnected = {name for name, back, down in fleet.reconnects if down >= killed_at - 1}
        back_s = sorted(back - killed_at for name, back, down in fleet.reconnects if down >= killed_at - 1)
        survivors_up = set.intersection(*(b.up() for b in rig.balancers))
        redialled = sum(n - dialled.get(name, 0) for name, n in rig.counts().items() if name != victim.name)

    print(
        f"fleet_ha: {AGENTS} simulated clusters (real agent code and retry pace, in-memory apply) on {REPLICAS} "
        f"trustd replicas (one PostgreSQL, one SoftHSM2 token) behind HAProxy ({len(rig.balancers)} instances, "
        f"the agents shared out); {WORKERS} agent processes"
    )
    print(f"   {rig.issued_s:.1f} s to issue {AGENTS} SVIDs on the token; {setup_s:.1f} s until all applied bundle 1")
    print(f"   connections per replica before the publish: {before_kill}; at 50 % of bundle 2: {held}")
    print(
        f"   killed {victim.name} (SIGKILL, the most connections: {held.get(victim.name, 0)}) "
        f"{half_s:.2f} s after the publish; up afterwards: {sorted(survivors_up)}"
    )
    print(
        f"   the survivors took {redialled} new connections after the kill (the killed replica's agents "
        f"dialling again: aiohttp re-dials a dropped keep-alive GET at once, so most agents never see the loss)"
    )
    if back_s:
        print(
            f"   {len(reconnected)} agents saw a sync fail (unreachable) and came back after the kill: first "
            f"{back_s[0]:.2f} s, median {back_s[len(back_s) // 2]:.2f} s, last {back_s[-1]:.2f} s"
        )
    print(
        f"   bundle 2 applied after the publish: p10 {percentile(took, 10):.2f} s, p50 {percentile(took, 50):.2f} s, "
        f"p90 {percentile(took, 90):.2f} s, p99 {percentile(took, 99):.2f} s"
    )
    if converged != AGENTS:
        print(f"   not at bundle 2, by their latest sync: {stragglers}")
    print(f"{'agents':>7} {'applied':>7} {'converge_all_s':>14} {'regressions':>11} {'redialled':>9} {'503s':>5}")
    shown = f"{converge:.2f}" if converge is not None else f"not all ({CONVERGE_LIMIT_S:.0f} s)"
    print(f"{AGENTS:>7} {converged:>7} {shown:>14} {len(fleet.regressions):>11} {redialled:>9} {fleet.busy:>5}")
    results: tuple[tuple[str, float | None, str], ...] = (
        ("converge_all_s", converge, "s"),  # null: not every agent converged within the limit
        ("converged_agents", float(converged), "count"),
        ("regressions", float(len(fleet.regressions)), "count"),
        ("replicas", float(REPLICAS), "count"),
        ("killed", 1.0, "count"),
        ("reconnections", float(redialled), "count"),
        ("unreachable_agents", float(len(reconnected)), "count"),
        ("answers_503", float(fleet.busy), "count"),
    )
    for metric, value, unit in results:
        rounded = round(value, 2) if value is not None else None
        print("RESULT " + json.dumps({"bench": "fleet_ha", "metric": metric, "value": rounded, "unit": unit}))


if __name__ == "__main__":
    main()
