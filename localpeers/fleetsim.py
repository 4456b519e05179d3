"""A simulated fleet for the fleet benchmarks (bench_fleet_sim, bench_fleet_ha, bench_reconnect_storm): thousands
of clusters, each running the real SyncAgent against a hub, in a few worker processes.

Each simulated cluster has its own X.509-SVID and runs the real agent (mTLS, long poll with ETag, signature
check, rollback guard, status reports on the polls, the hub's revocation list) and the real run loop's pace
(`syncer.agent.pace`: full-jitter backoff and Retry-After, as `edgetrust-syncer` retries), but applies to an
in-memory target (localpeers/simulation.py), since 10,000 kube-apiservers cannot run here. A simulator with a
fixed retry would measure the wrong client in a storm.

The workers tell the bench process what the agents saw through one queue; `Fleet` keeps the tally: who is
connected, which revision each applied and when, regressions (a lower revision applied after a higher one, or an
older bundle served than the one held: the rollback guard refused it), 503s, and reconnects (the first contact
after a run of unreachable syncs).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.revocations import KEY_ID, RevocationStore
from edgetrust.bundles.signing import SigningKey, load_verification_keys, sign_files
from localpeers.simulation import InMemoryCluster
from localpeers.svid import issue_svid_files
from localpeers.webhook import LOOPBACK_SITE
from syncer.agent import SyncAgent, SyncResult, pace, run_backoff
from syncer.sources import HubSource, hub_reporter, hub_session
from syncer.state import AgentState
from trustd.server.ca import SpiffeCA

WAIT_S = 20.0
REPO = Path(__file__).resolve().parent.parent
PUBLISHER = "spiffe://edge.example/operator/ci"


def lo_tx_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        if line.strip().startswith("lo:"):
            return int(line.split(":", 1)[1].split()[8])
    return 0


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used (/proc/<pid>/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counter_of(revision: str) -> int:
    """A bundle revision's counter (`000000000002-<commit>`), the number that decides which bundle is newer."""
    head = revision.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


@dataclass
class FleetFiles:
    """What the hub and the agents are configured with: the fleet file (one group, a canary and three waves), the
    publisher's signing key, EK roots and reference values (no node enrolls here), and per-agent SVIDs."""

    work: Path
    names: list[str]
    signing: ec.EllipticCurvePrivateKey
    public_pem: bytes

    def hub_flags(self) -> list[str]:
        return [
            "--ek-roots", str(self.work / "ek-roots"), "--reference-values", str(self.work / "refvalues.yaml"),
            "--fleet", str(self.work / "fleet.yaml"), "--policy-keys", str(self.work / "keys"),
        ]  # fmt: skip

    def bundle(self, counter: int) -> bytes:
        """The repository's policies, signed for the group, at `counter`."""
        files = build_files(
            read_repository(REPO / "policies", parameters=LOOPBACK_SITE),
            counter=counter,
            commit="fleet",
            group="gateways",
        )
        return pack(sign_files(files, SigningKey("ci-1", self.signing)))

    def issue_svids(self, ca: SpiffeCA) -> float:
        """An SVID per agent and the publisher's; the seconds it took."""
        started = time.monotonic()
        for name in self.names:
            issue_svid_files(ca, f"spiffe://edge.example/cluster/{name}", self.work / "certs" / name)
        issue_svid_files(ca, PUBLISHER, self.work / "publisher")
        (self.work / "ek-roots" / "placeholder.pem").write_bytes(ca.x509_authorities_pem())
        return time.monotonic() - started


def prepare(work: Path, agents: int) -> FleetFiles:
    names = [f"site-{i:05d}" for i in range(agents)]
    signing = ec.generate_private_key(ec.SECP256R1())
    public_pem = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (work / "keys").mkdir(parents=True)
    (work / "keys" / "ci-1.pem").write_bytes(public_pem)
    (work / "ek-roots").mkdir()
    (work / "refvalues.yaml").write_text(
        yaml.safe_dump({"device_classes": {"none": {"pcr_bank": "sha256", "pcrs": {0: ["00" * 32]}}}})
    )
    fleet = {
        "groups": {
            "gateways": {
                "matchLabels": {"site-class": "edge-gateway"},
                "canary": names[:10],
                "waves": [10, 50, 100],
                "publishers": [PUBLISHER],
            }
        },
        "clusters": {n: {"labels": {"site-class": "edge-gateway"}} for n in names},
    }
    (work / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    return FleetFiles(work, names, signing, public_pem)


def worker(
    index: int,
    names: list[str],
    hub: str,
    roots: str,
    certs: str,
    states: str,
    keys_pem: tuple[bytes, bytes],
    queue: Any,
) -> None:
    # uvloop: the simulation's own event loop cost (2,500 agents per process) is not the agent's; trustd runs on
    # uvloop too (uvicorn[standard])
    # niced: the agents' CPU stands for 10,000 other machines' and should not take the hub's 2 cores from it (at
    # equal priority the scheduler gave 4 agent processes 4/5 of them, and the hub's handshakes fell behind)
    os.nice(10)
    uvloop.run(run_agents(index, names, hub, roots, Path(certs), Path(states), keys_pem, queue))


async def run_agents(
    index: int,
    names: list[str],
    hub: str,
    roots: str,
    certs: Path,
    states: Path,
    keys_pem: tuple[bytes, bytes],
    queue: Any,
) -> None:
    """Events on `queue`, each (kind, agent, time, value): connected; applied (a new revision, value: its counter,
    also when its policies were those the cluster held already); regression
    (value: the counter); busy (a 503); back (value: when the run of unreachable syncs began); result (value: a
    new kind of sync result)."""
    keys = load_verification_keys({"ci-1": keys_pem[0]})
    revocation_keys = load_verification_keys({KEY_ID: keys_pem[1]})
    polls = 0

    async def one(name: str) -> None:
        nonlocal polls
        context = ssl.create_default_context(cafile=roots)
        context.load_cert_chain(str(certs / name / "svid.pem"), str(certs / name / "svid.key"))
        async with hub_session(hub, context) as http:
            agent = SyncAgent(
                cluster=name,
                group="gateways",
                site_class="edge-gateway",
                source=HubSource("/v1/policy/bundle", http, wait_s=WAIT_S, revocations_url="/v1/policy/revocations"),
                keys=keys,
                kube=InMemoryCluster(),
                state=AgentState(states / name),
                reporter=hub_reporter("/v1/policy/status", http),
                revocations=RevocationStore(states / name, revocation_keys),
            )
            backoff = run_backoff()
            first, target, highest = True, "", -1
            down_since: float | None = None
            last: SyncResult | None = None
            while True:
                outcome = await agent.run_once()
                polls += 1
                now = time.time()
                if first:
                    queue.put(("connected", name, now, 0))
                    first = False
                if outcome.result is not last:  # what a straggler is stuck on, for the bench's diagnosis
                    last = outcome.result
                    queue.put(("result", name, now, str(last)))
                lost = outcome.result is SyncResult.UNREACHABLE
                if lost and ("503" in outcome.error or outcome.retry_after_s is not None):
                    queue.put(("busy", name, now, 0))
                if lost and down_since is None:
                    down_since = now
                elif not lost and down_since is not None:
                    queue.put(("back", name, now, down_since))
                    down_since = None
                counter = counter_of(outcome.revision)
                seen = outcome.result in (SyncResult.APPLIED, SyncResult.UNCHANGED)
                if (seen and counter < highest) or "bundle_rollback" in outcome.error:
                    queue.put(("regression", name, now, counter))
                if seen:
                    highest = max(highest, counter)
                if seen and target != outcome.revision:  # unchanged: a new revision, the same policies
                    target = outcome.revision
                    queue.put(("applied", name, now, counter))
                await pace(outcome, backoff)  # the syncer's own: full jitter, the hub's Retry-After

    async def report_polls() -> None:
        while True:
            await asyncio.sleep(1)
            queue.put(("polls", str(index), time.time(), polls))

    tasks = [asyncio.create_task(report_polls())]
    for position, name in enumerate(names):
        tasks.append(asyncio.create_task(one(name)))
        if position % 50 == 49:
            await asyncio.sleep(0.1)  # ramp: 500 new TLS connections per second per worker
    await asyncio.gather(*tasks)


@dataclass
class Fleet:
    """The agent worker processes, and the tally of what their agents saw."""

    files: FleetFiles
    #: where the agents reach the hub; several (load balancers) are shared out among the worker processes
    hub_urls: list[str]
    roots: Path
    revocation_pem: bytes
    states: Path
    workers: int = 4
    connected: set[str] = field(default_factory=set)
    #: when each agent applied its newest revision, and that revision's counter
    applied: dict[str, float] = field(default_factory=dict)
    counter: dict[str, int] = field(default_factory=dict)
    polls: dict[str, float] = field(default_factory=dict)
    regressions: set[str] = field(default_factory=set)
    busy: int = 0
    #: each agent's latest kind of sync result (unreachable, not-modified...)
    last: dict[str, str] = field(default_factory=dict)
    #: (agent, back at, unreachable since) for every reconnect
    reconnects: list[tuple[str, float, float]] = field(default_factory=list)
    _processes: list[Any] = field(default_factory=list)
    _queue: Any = None

    def start(self) -> None:
        spawn = multiprocessing.get_context("spawn")
        self._queue = spawn.Queue()
        names = self.files.names
        keys_pem = (self.files.public_pem, self.revocation_pem)
        certs = str(self.files.work / "certs")
        for i in range(self.workers):
            hub = self.hub_urls[i % len(self.hub_urls)]
            args = (i, names[i :: self.workers], hub, str(self.roots), certs, str(self.states), keys_pem)
            process = spawn.Process(target=worker, args=(*args, self._queue), daemon=True)
            process.start()
            self._processes.append(process)

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.join(timeout=10)

    def at(self, counter: int) -> int:
        """How many agents have applied `counter` or a newer revision."""
        return sum(1 for c in self.counter.values() if c >= counter)

    def stragglers(self, counter: int) -> dict[str, int]:
        """The agents not yet at `counter`, by their latest kind of sync result."""
        tally: dict[str, int] = {}
        for name in self.files.names:
            if self.counter.get(name, 0) < counter:
                kind = self.last.get(name, "none yet")
                tally[kind] = tally.get(kind, 0) + 1
        return tally

    def drain(self, until: float, stop: Callable[[], bool] | None = None, label: str = "") -> None:
        """Take the workers' events until `until` (time.time()) or until `stop()` holds."""
        shown = time.time()
        while time.time() < until and not (stop and stop()):
            if label and time.time() - shown > 10:
                shown = time.time()
                newest = max(self.counter.values(), default=0)
                print(
                    f"   ... {label}: {len(self.connected)} connected, {len(self.applied)} applied"
                    + (f" ({self.at(newest)} at revision {newest})" if newest > 1 else ""),
                    file=sys.stderr,
                    flush=True,
                )
            try:
                kind, name, when, value = self._queue.get(timeout=0.2)
            except Exception:  # noqa: BLE001, S112 - queue.Empty from another process's module
                continue
            if kind == "connected":
                self.connected.add(name)
            elif kind == "applied":
                self.applied[name] = when
                self.counter[name] = value
            elif kind == "polls":
                self.polls[name] = value
            elif kind == "regression":
                self.regressions.add(name)
            elif kind == "result":
                self.last[name] = value
            elif kind == "busy":
                self.busy += 1
            elif kind == "back":
                self.reconnects.append((name, when, value))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]
