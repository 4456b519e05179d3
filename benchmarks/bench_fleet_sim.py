"""10,000 simulated cluster agents long-polling one trustd: convergence after a publish, idle cost, hub memory.

A SIMULATION of the fleet, not of the agent: each simulated cluster runs the real SyncAgent (mTLS with its own
X.509-SVID, long poll with ETag, signature check, rollback guard, status reports carried on the polls, the
hub's revocation list), but applies to an in-memory
target (localpeers/simulation.py) instead of a kube-apiserver, since 10,000 of those cannot run here; the simulated
fleet is localpeers/fleetsim.py, shared with bench_fleet_ha and bench_reconnect_storm. trustd runs as
`trustd serve` in its own process; the agents run in worker processes.

Figures: converge_all_s (publish -> every agent applied it, through the group's canary and waves),
idle_poll_bytes (loopback bytes per idle long poll: TCP, TLS and HTTP, both directions),
hub_rss_mb (trustd's resident memory with every agent connected and waiting).
Targets: <= 30 s, <= 1 KB, <= 1 GB.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgetrust.bundles.revocations import KEY_ID
from edgetrust.spiffe.id import TrustDomain
from localpeers.fleetsim import WAIT_S, Fleet, cpu_s, lo_tx_bytes, prepare, rss_mb
from localpeers.hub import free_port
from trustd.server.ca import SpiffeCA
from trustd.server.revocations import load_or_create_key

AGENTS = int(os.environ.get("FLEET_SIM_AGENTS", "10000"))
WORKERS = 4
IDLE_WINDOW_S = 25.0


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    states = Path(tempfile.mkdtemp(prefix="fleet-sim-state-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    files = prepare(work, AGENTS)
    trust_domain = TrustDomain.parse("edge.example")
    ca = SpiffeCA.load_or_create_root(work / "hub" / "ca", trust_domain=trust_domain)
    load_or_create_key(work / "hub" / "revocations")  # with the CA: what `trustd ca init` makes
    started = time.monotonic()
    issued_s = files.issue_svids(ca)
    roots = work / "roots.pem"
    roots.write_bytes(ca.x509_authorities_pem())

    port = free_port()
    hub_log = (work / "trustd.log").open("wb")
    hub = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "trustd"),
            "serve",
            "--data-dir",
            str(work / "hub"),
            "--trust-domain",
            "edge.example",
            "--port",
            str(port),
            *files.hub_flags(),
        ],
        stdout=hub_log,
        stderr=hub_log,
    )
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(roots))
    context.load_cert_chain(str(work / "publisher" / "svid.pem"), str(work / "publisher" / "svid.key"))
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", verify=context, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or hub.poll() is not None:
            raise SystemExit(f"trustd did not start: {(work / 'trustd.log').read_text()[-2000:]}")
        time.sleep(0.2)

    revocation_pem = (work / "hub" / "revocations" / f"{KEY_ID}.pem").read_bytes()
    fleet = Fleet(files, [url], roots, revocation_pem, states, workers=WORKERS)
    fleet.start()
    connected, applied, polls = fleet.connected, fleet.applied, fleet.polls
    drain = fleet.drain

    try:
        drain(time.time() + 300, lambda: len(connected) == AGENTS, "connecting")
        connect_s = time.monotonic() - started - issued_s
        time.sleep(2)
        drain(time.time() + WAIT_S + 2)  # every agent is now in a long poll
        tx0, polls0 = lo_tx_bytes(), sum(polls.values())
        drain(time.time() + IDLE_WINDOW_S)
        idle_polls = sum(polls.values()) - polls0
        idle_bytes = (lo_tx_bytes() - tx0) / max(idle_polls, 1)
        memory = rss_mb(hub.pid)

        blob = files.bundle(1)
        hub_cpu0 = cpu_s(hub.pid)
        published_at = time.time()
        answer = httpx.post(f"{url}/v1/policy/bundles/gateways", content=blob, verify=context, timeout=120)
        assert answer.status_code == 200, answer.text
        drain(time.time() + 180, lambda: len(applied) == AGENTS, "converging")
        converge = (max(applied.values()) - published_at) if len(applied) == AGENTS else None
        hub_cpu = cpu_s(hub.pid) - hub_cpu0
    finally:
        fleet.stop()
        hub.terminate()
        try:
            hub.wait(timeout=15)
        except subprocess.TimeoutExpired:  # graceful shutdown waits for thousands of long polls: stop it
            hub.kill()
            hub.wait()
        hub_log.close()
        shutil.rmtree(states, ignore_errors=True)

    print(
        f"fleet_sim: {AGENTS} simulated clusters (real agent code, in-memory apply) on one trustd; "
        f"{WORKERS} agent processes"
    )
    print(
        f"   {issued_s:.1f} s to issue {AGENTS} SVIDs; "
        f"{connect_s:.1f} s until every agent had finished its first (idle) long poll"
    )
    print(
        f"{'agents':>7} {'applied':>7} {'converge_all_s':>14} {'idle_polls':>10} "
        f"{'idle_poll_bytes':>15} {'hub_rss_mb':>10}"
    )
    shown = f"{converge:.2f}" if converge is not None else "not all (180 s)"
    print(f"{AGENTS:>7} {len(applied):>7} {shown:>14} {idle_polls:>10.0f} {idle_bytes:>15.0f} {memory:>10.0f}")
    print(f"   trustd used {hub_cpu:.1f} CPU-seconds between the publish and the last apply")
    results: tuple[tuple[str, float | None, str], ...] = (
        ("converge_all_s", converge, "s"),  # null: not every agent converged within 180 s
        ("converged_agents", float(len(applied)), "count"),
        ("idle_poll_bytes", idle_bytes, "bytes"),
        ("hub_rss_mb", memory, "MB"),
        # the hub's own CPU from publish to the last apply: what the converge figure would be if the hub had the
        # machine to itself (here 4 processes of simulated agents share its 2 cores)
        ("hub_cpu_s_converge", hub_cpu, "s"),
    )
    for metric, value, unit in results:
        rounded = round(value, 2) if value is not None else None
        print("RESULT " + json.dumps({"bench": "fleet_sim", "metric": metric, "value": rounded, "unit": unit}))


if __name__ == "__main__":
    main()
