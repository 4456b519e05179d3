"""A simulated fleet against the hub as replicas, the rig of bench_fleet_ha and bench_reconnect_storm: a SoftHSM2
token with the trust made once (`trustd ca init`), one real PostgreSQL, N `trustd serve` replicas on both, HAProxy
in front of them (TLS passed through), and the simulated agents (localpeers/fleetsim.py) connected through HAProxy
only, as clusters reach a hub's Service or load balancer.

One HAProxy process holds two descriptors per client (its side and the replica's), and this machine's hard limit
is 20,000 descriptors a process (no CAP_SYS_RESOURCE to raise it): so past LB_AGENTS agents there are several
HAProxy instances in front of the same replicas, as several load balancer nodes behind one DNS name, and the
agent processes are shared out among them.

Everything runs on loopback in temporary directories and is stopped at the end, also on failure.
"""

from __future__ import annotations

import math
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from edgetrust.bundles.revocations import KEY_ID
from localpeers.fleetsim import Fleet, FleetFiles, prepare
from localpeers.haproxy import PATIENT_CHECKS, Backend, HAProxy, running_haproxy
from localpeers.postgres import running_postgres
from localpeers.replicas import Replica, init_trust, running_replicas
from localpeers.softhsm import make_token
from localpeers.tlsca import TestCA

#: clients one HAProxy takes here (two descriptors each, under the 20,000 a process may open)
LB_AGENTS = 8000


@dataclass
class HAFleet:
    files: FleetFiles
    replicas: list[Replica]
    balancers: list[HAProxy]
    fleet: Fleet
    publisher: ssl.SSLContext
    roots: Path
    issued_s: float

    def publish(self, counter: int) -> float:
        """The bundle at `counter`, published through the balancer; the time (time.time()) it was sent."""
        sent = time.time()
        answer = httpx.post(
            f"{self.balancers[0].url}/v1/policy/bundles/gateways",
            content=self.files.bundle(counter),
            verify=self.publisher,
            timeout=120,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"publish {counter}: {answer.status_code} {answer.text}")
        return sent

    def converge_first_bundle(self, agents: int) -> float:
        """Publish bundle 1 and wait until every agent applied it and is back in a long poll; the seconds it took.
        Raises SystemExit naming the stragglers when they do not within 600 s (the bench has nothing to measure)."""
        started = time.time()
        self.publish(1)
        self.fleet.drain(time.time() + 600, lambda: self.fleet.at(1) == agents, "applying bundle 1")
        took = time.time() - started
        if self.fleet.at(1) != agents:
            stuck = self.fleet.stragglers(1)
            raise SystemExit(
                f"only {self.fleet.at(1)} of {agents} agents applied bundle 1 within 600 s; the rest: {stuck}"
            )
        self.fleet.drain(time.time() + 3)  # the last reports delivered; every agent back in a long poll
        return took

    def all_up(self) -> bool:
        """Every balancer's health checks see every replica up."""
        return all(b.up() == {r.name for r in self.replicas} for b in self.balancers)

    def current(self) -> dict[str, int]:
        """Connections each replica holds now, over all balancers."""
        return _summed(b.current() for b in self.balancers)

    def counts(self) -> dict[str, int]:
        """Connections each replica was given so far, over all balancers."""
        return _summed(b.counts() for b in self.balancers)


def _keep_logs(work: Path) -> None:
    """The replicas' and balancers' logs, kept in /tmp/fleet-ha-logs (the last run's) to read after a bad run."""
    kept = Path(tempfile.gettempdir()) / "fleet-ha-logs"
    shutil.rmtree(kept, ignore_errors=True)
    for log in [*work.glob("replicas/*/trustd.log"), *work.glob("lb*/haproxy.log")]:
        target = kept / log.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, target)


def _summed(tallies: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for tally in tallies:
        for name, n in tally.items():
            total[name] = total.get(name, 0) + n
    return total


@contextmanager
def running_ha_fleet(agents: int, *, replicas: int = 3, workers: int = 4) -> Iterator[HAFleet]:
    """The rig, with the agents' worker processes started (not yet connected: drain `fleet` for that)."""
    work = Path(tempfile.mkdtemp(prefix="fleet-ha-"))
    states = Path(tempfile.mkdtemp(prefix="fleet-ha-state-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, states, ignore_errors=True)
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        stack.callback(_keep_logs, work)  # after every process stopped, before the rest is deleted
        files = prepare(work / "fleet", agents)
        token = make_token(work / "softhsm")
        trust = init_trust(token, work / "init")
        stack.callback(trust.close)
        issued_s = files.issue_svids(trust.ca)
        roots = work / "roots.pem"
        roots.write_bytes(trust.ca.x509_authorities_pem())
        postgres = stack.enter_context(running_postgres(TestCA(work / "pg-ca")))
        hubs = stack.enter_context(
            running_replicas(
                work / "replicas",
                replicas,
                store_url=postgres.new_database(),
                token=token,
                roots=roots,
                args=files.hub_flags(),
            )
        )
        backends = [Backend(r.name, "127.0.0.1", r.port) for r in hubs]
        count = min(workers, math.ceil(agents / LB_AGENTS))
        maxconn = math.ceil(agents / count) + 1000
        balancers = [
            stack.enter_context(
                running_haproxy(work / f"lb{i}", backends, ca_file=roots, maxconn=maxconn, checks=PATIENT_CHECKS)
            )
            for i in range(count)
        ]
        revocation_pem = (hubs[0].workdir / "data" / "revocations" / f"{KEY_ID}.pem").read_bytes()
        fleet = Fleet(files, [b.url for b in balancers], roots, revocation_pem, states, workers=workers)
        publisher = ssl.create_default_context(cafile=str(roots))
        publisher.load_cert_chain(
            str(files.work / "publisher" / "svid.pem"), str(files.work / "publisher" / "svid.key")
        )
        stack.callback(fleet.stop)
        fleet.start()
        yield HAFleet(files, hubs, balancers, fleet, publisher, roots, issued_s)
