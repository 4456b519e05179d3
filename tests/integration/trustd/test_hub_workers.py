"""`trustd serve --workers 2` on a real PostgreSQL: two processes serve the one port, each a whole hub.

What could go wrong, and is checked here: one worker taking every connection (the other idle); a long poll held
by one worker not woken by a publish that reached the other (the wake-up must come through the store's
LISTEN/NOTIFY, as across replicas); workers on a PKCS#11 token failing to log in each for itself; a SIGTERM that
stops the supervisor and leaves a worker serving; a dead worker leaving a half-serving hub; SQLite with more
than one worker served (refused: it tells no other process of a write)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509

from edgetrust.spiffe.id import TrustDomain
from localpeers.hub import HubProcess, connections_by_pid, free_port, golden_reference_values, hub_process
from localpeers.nodes import enroll_node
from localpeers.postgres import PostgresServer, running_postgres
from localpeers.softhsm import SoftToken
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from tests.integration.conftest import BootedDevice
from tests.support.fleet_hub import DOMAIN, GROUP, OPERATOR, PUBLISHER, FleetHub
from trustd.agent.renewal_client import renew_node
from trustd.server.ca import SpiffeCA

pytestmark = pytest.mark.integration

TRUSTD = str(Path(sys.executable).parent / "trustd")
WAIT_S = 30.0
CLUSTERS = [f"c{i}" for i in range(8)]
FLEET = {
    "groups": {GROUP: {"matchLabels": {"site-class": "edge-gateway"}, "waves": [100], "publishers": [PUBLISHER]}},
    "clusters": {name: {"labels": {"site-class": "edge-gateway"}} for name in CLUSTERS},
    "operators": [OPERATOR],
}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


def until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def port_of(hub: HubProcess) -> int:
    return int(hub.url.rsplit(":", 1)[1])


def stopped_by_sigterm(hub: HubProcess, workers: list[int]) -> None:
    hub.process.send_signal(signal.SIGTERM)
    assert hub.process.wait(timeout=60) == 128 + signal.SIGTERM
    for pid in workers:
        until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"worker {pid} to exit")  # type: ignore[misc]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port_of(hub))) != 0  # nobody serves the port any more


def policy_files(tmp_path: Path) -> tuple[Path, Path]:
    """The fleet file and the publishers' keys of a policy hub; the publisher's private key in signing.pem."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = tmp_path / "publisher-keys"
    keys.mkdir()
    signing = ec.generate_private_key(ec.SECP256R1())
    (keys / "ci-1.pem").write_bytes(
        signing.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "signing.pem").write_bytes(
        signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(FLEET))
    return fleet_file, keys


def test_two_workers_share_the_port_and_wake_each_others_long_polls(
    tmp_path: Path, ek_roots: Path, postgres: PostgresServer
) -> None:
    from cryptography.hazmat.primitives import serialization

    fleet_file, keys = policy_files(tmp_path)
    args = ("--fleet", str(fleet_file), "--verification-key", str(keys))
    with hub_process(
        tmp_path / "hub", ek_roots=ek_roots, workers=2, store_url=postgres.new_database(), extra_args=args
    ) as hub:
        workers = hub.worker_pids()
        assert len(workers) == 2
        assert hub.pid not in workers
        log = (tmp_path / "hub" / "trustd.log").read_text()
        assert {f"worker {i} of 2 serving" in log for i in (1, 2)} == {True}, log
        ca = SpiffeCA.load(hub.data_dir / "ca", trust_domain=TrustDomain.parse(DOMAIN))
        signing = serialization.load_pem_private_key((tmp_path / "signing.pem").read_bytes(), None)
        fleet = FleetHub(None, tmp_path, signing, "ci-1")  # type: ignore[arg-type]  # only signed_bundle is used

        def client(spiffe_id: str) -> httpx.Client:
            name = spiffe_id.rsplit("/", 1)[-1]
            cert, key = issue_svid_files(ca, spiffe_id, tmp_path / "svids" / name)
            context = ssl.create_default_context(cafile=str(hub.ca_bundle))
            context.load_cert_chain(str(cert), str(key))
            return httpx.Client(base_url=hub.url, verify=context, timeout=WAIT_S + 30)

        # every cluster holds a long poll on a connection of its own; the kernel spreads them over both workers
        clients = {name: client(f"spiffe://{DOMAIN}/cluster/{name}") for name in CLUSTERS}
        publisher = client(PUBLISHER)
        try:
            for c in clients.values():
                assert c.get("/v1/policy/bundle").status_code == 204  # nothing published; the connection stays
            answers: dict[str, httpx.Response] = {}

            def hold(name: str) -> None:
                answers[name] = clients[name].get("/v1/policy/bundle", params={"wait": WAIT_S})

            owners = connections_by_pid(workers, port_of(hub))
            assert sum(owners.values()) == len(CLUSTERS), owners
            assert all(count > 0 for count in owners.values()), f"one worker holds every connection: {owners}"
            threads = [threading.Thread(target=hold, args=(name,)) for name in CLUSTERS]
            for thread in threads:
                thread.start()
            time.sleep(1)  # the polls are parked (their threads sent them; none can return before a publish)
            assert not answers
            published_at = time.monotonic()
            done = publisher.post(f"/v1/policy/bundles/{GROUP}", content=fleet.signed_bundle(1, GROUP))
            assert done.status_code == 200, done.text
            for thread in threads:
                thread.join()
            woken_after = time.monotonic() - published_at
            assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(CLUSTERS, 200)
            assert len({a.headers["etag"] for a in answers.values()}) == 1
            # all returned with the bundle, those held by the worker the publish did not reach too, before their
            # wait ended: woken by the store's notification, not by a timer
            assert woken_after < WAIT_S - 1, woken_after
        finally:
            for c in [*clients.values(), publisher]:
                c.close()
        stopped_by_sigterm(hub, workers)


def test_workers_each_log_in_to_the_token_and_a_dead_worker_stops_the_hub(
    tmp_path: Path, ek_roots: Path, postgres: PostgresServer, soft_token: SoftToken, golden_device: BootedDevice
) -> None:
    with hub_process(
        tmp_path / "hub", ek_roots=ek_roots, workers=2, store_url=postgres.new_database(), token=soft_token
    ) as hub:
        workers = hub.worker_pids()
        log = (tmp_path / "hub" / "trustd.log").read_text()
        assert {f"worker {i} of 2 serving" in log for i in (1, 2)} == {True}, log  # each logged in to the token
        (root,) = x509.load_pem_x509_certificates(hub.ca_bundle.read_bytes())
        svid = tmp_path / "svid"
        enroll_node(hub.url, hub.ca_bundle, tcti=golden_device.tcti, event_log=golden_device.event_log, out_dir=svid)
        serials = set()
        for _ in range(6):  # each renewal on a new connection: both workers sign with the token's one key
            renewed = renew_node(hub=hub.url, svid_dir=svid, tcti=golden_device.tcti, event_log=golden_device.event_log)
            leaf = x509.load_pem_x509_certificates((svid / "svid.pem").read_bytes())[0]
            leaf.verify_directly_issued_by(root)
            serials.add(renewed.serial)
        assert len(serials) == 6
        assert not list(hub.data_dir.rglob("ca.key"))

        os.kill(workers[0], signal.SIGKILL)  # a worker dies: the whole hub stops (fail closed), not half of it
        assert hub.process.wait(timeout=60) == 1
        until(lambda: not Path(f"/proc/{workers[1]}").exists(), "the other worker to exit")
        log = (tmp_path / "hub" / "trustd.log").read_text()
        assert "exited with signal SIGKILL: stopping the hub" in log, log


def test_sqlite_with_more_than_one_worker_is_refused(tmp_path: Path, ek_roots: Path) -> None:
    refvalues = tmp_path / "reference-values.yaml"
    refvalues.write_text(yaml.safe_dump(golden_reference_values()))
    port = free_port()
    done = subprocess.run(
        [TRUSTD, "serve", "--data-dir", str(tmp_path / "data"), "--ek-roots", str(ek_roots),
         "--reference-values", str(refvalues), "--port", str(port), "--workers", "2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    for named in ("--workers", "TRUSTD_WORKERS", "PostgreSQL"):
        assert named in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made
