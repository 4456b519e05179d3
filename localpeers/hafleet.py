"""A simulated fleet against the hub as replicas, the rig of bench_fleet_ha and bench_reconnect_storm: a SoftHSM2
token with the trust made once (`trustd ca init`), one real PostgreSQL, N `trustd serve` replicas on both, HAProxy
in front of them (TLS passed through), and the simulated agents (localpeers/fleetsim.py) connected through HAProxy
only, as clusters reach a hub's Service or load balancer.

Everything runs on loopback in temporary directories and is stopped at the end, also on failure.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from edgetrust.bundles.revocations import KEY_ID
from localpeers.fleetsim import Fleet, FleetFiles, prepare
from localpeers.haproxy import Backend, HAProxy, running_haproxy
from localpeers.postgres import running_postgres
from localpeers.replicas import Replica, init_trust, running_replicas
from localpeers.softhsm import make_token
from localpeers.tlsca import TestCA


@dataclass
class HAFleet:
    files: FleetFiles
    replicas: list[Replica]
    balancer: HAProxy
    fleet: Fleet
    publisher: ssl.SSLContext
    roots: Path
    issued_s: float

    def publish(self, counter: int) -> float:
        """The bundle at `counter`, published through the balancer; the time (time.time()) it was sent."""
        sent = time.time()
        answer = httpx.post(
            f"{self.balancer.url}/v1/policy/bundles/gateways",
            content=self.files.bundle(counter),
            verify=self.publisher,
            timeout=120,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"publish {counter}: {answer.status_code} {answer.text}")
        return sent

    def all_up(self) -> bool:
        return self.balancer.up() == {r.name for r in self.replicas}


@contextmanager
def running_ha_fleet(agents: int, *, replicas: int = 3, workers: int = 4) -> Iterator[HAFleet]:
    """The rig, with the agents' worker processes started (not yet connected: drain `fleet` for that)."""
    work = Path(tempfile.mkdtemp(prefix="fleet-ha-"))
    states = Path(tempfile.mkdtemp(prefix="fleet-ha-state-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, states, ignore_errors=True)
        stack.callback(shutil.rmtree, work, ignore_errors=True)
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
        balancer = stack.enter_context(
            running_haproxy(work / "lb", backends, ca_file=roots, maxconn=max(2000, 2 * agents + 1000))
        )
        revocation_pem = (hubs[0].workdir / "data" / "revocations" / f"{KEY_ID}.pem").read_bytes()
        fleet = Fleet(files, balancer.url, roots, revocation_pem, states, workers=workers)
        publisher = ssl.create_default_context(cafile=str(roots))
        publisher.load_cert_chain(
            str(files.work / "publisher" / "svid.pem"), str(files.work / "publisher" / "svid.key")
        )
        stack.callback(fleet.stop)
        fleet.start()
        yield HAFleet(files, hubs, balancer, fleet, publisher, roots, issued_s)
