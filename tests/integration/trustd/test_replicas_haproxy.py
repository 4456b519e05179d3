"""Three trustd replicas (`trustd serve` processes) on one real PostgreSQL and one PKCS#11 token (SoftHSM2), behind
a real HAProxy on loopback (TLS passed through, round robin, health checks on /healthz): the trust material is
made once (`trustd ca init`) and no replica has a CA of its own; a node enrolled at one replica renews through the
balancer on the others, and every SVID verifies against the one bundle all three serve; a replica killed with
SIGKILL between a challenge and its answer loses nothing, and the challenge is still answered only once."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509

from attestation.device import TPMDevice
from localpeers.haproxy import Backend, running_haproxy
from localpeers.hub import free_port, golden_reference_values
from localpeers.nodes import enroll_node
from localpeers.postgres import PostgresServer, running_postgres
from localpeers.processes import running
from localpeers.replicas import token_flags
from localpeers.softhsm import SoftToken
from localpeers.swtpm import SoftwareTPMFactory
from localpeers.tlsca import TestCA
from tests.integration.conftest import BootedDevice, _booted
from tests.support.protocol import ManualEnrollment
from trustd.agent.renewal_client import renew_node
from trustd.server.store import open_store

pytestmark = pytest.mark.integration

TRUSTD = str(Path(sys.executable).parent / "trustd")
NODE = "spiffe://edge.example/site/lab/node/gw-01"


@dataclass(frozen=True)
class Replica:
    name: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextmanager
def _replica(
    name: str, workdir: Path, *, ek_roots: Path, store_url: str, token: SoftToken, roots: Path
) -> Iterator[Replica]:
    workdir.mkdir(parents=True)
    refvalues = workdir / "reference-values.yaml"
    refvalues.write_text(yaml.safe_dump(golden_reference_values()))
    port = free_port()
    argv = [TRUSTD, "serve", "--data-dir", str(workdir / "data"), "--trust-domain", "edge.example"]
    argv += ["--ek-roots", str(ek_roots), "--reference-values", str(refvalues), "--port", str(port)]
    argv += ["--store", store_url, *token_flags(token)]
    verify = ssl.create_default_context(cafile=str(roots))

    def ready() -> bool:
        return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=verify, timeout=1).status_code == 200

    env = {**os.environ, **token.environ()}
    with running(argv, ready=ready, log=workdir / "trustd.log", env=env) as process:
        yield Replica(name, port, process.pid)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


def _leaf(svid_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates((svid_dir / "svid.pem").read_bytes())[0]


def test_three_replicas_behind_haproxy_share_one_trust(
    tmp_path: Path,
    ek_roots: Path,
    postgres: PostgresServer,
    soft_token: SoftToken,
    golden_device: BootedDevice,
    tpm_factory: SoftwareTPMFactory,
) -> None:
    store_url = postgres.new_database()
    init = subprocess.run(
        [TRUSTD, "ca", "init", "--data-dir", str(tmp_path / "init"), "--trust-domain", "edge.example",
         *token_flags(soft_token)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **soft_token.environ()},
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    bundle = subprocess.run(
        [TRUSTD, "bundle", "--pem", "--data-dir", str(tmp_path / "init"), *token_flags(soft_token)],
        capture_output=True, timeout=60, check=True, env={**os.environ, **soft_token.environ()},
    ).stdout  # fmt: skip
    roots = tmp_path / "roots.pem"
    roots.write_bytes(bundle)
    (root,) = x509.load_pem_x509_certificates(bundle)
    verify = ssl.create_default_context(cafile=str(roots))

    with ExitStack() as stack:
        replicas = [
            stack.enter_context(
                _replica(
                    f"r{i}", tmp_path / f"r{i}", ek_roots=ek_roots, store_url=store_url, token=soft_token, roots=roots
                )
            )
            for i in range(3)
        ]
        balancer = stack.enter_context(
            running_haproxy(tmp_path / "lb", [Backend(r.name, "127.0.0.1", r.port) for r in replicas], ca_file=roots)
        )
        # one trust: the same bundle at every replica, and no CA or key file in any replica's data dir
        served = {httpx.get(f"{r.url}/v1/bundle.pem", verify=verify).content for r in replicas}
        assert served == {bundle}
        for replica in replicas:
            names = {p.name for p in (tmp_path / replica.name / "data").rglob("*")}
            assert not names & {"ca.key", "jwt.key", "signing.key", "ca.crt"}, names

        # enroll at r0, renew through the balancer: round robin hands each renewal's connection to the next replica
        svid = tmp_path / "svid"
        enrolled = enroll_node(replicas[0].url, roots, tcti=golden_device.tcti, event_log=golden_device.event_log,
                               out_dir=svid)  # fmt: skip
        assert enrolled.spiffe_id == NODE
        _leaf(svid).verify_directly_issued_by(root)
        before = balancer.counts()
        serials = {_leaf(svid).serial_number}
        for _ in range(3):
            renewed = renew_node(hub=balancer.url, svid_dir=svid, tcti=golden_device.tcti,
                                 event_log=golden_device.event_log)  # fmt: skip
            _leaf(svid).verify_directly_issued_by(root)  # whichever replica signed, the one root verifies it
            serials.add(renewed.serial)
        after = balancer.counts()
        assert all(after[r.name] > before[r.name] for r in replicas), (before, after)
        assert len(serials) == 4

        # a challenge from r1, then r1 is killed before the answer: the answer completes elsewhere, once
        with ExitStack() as device_stack:
            device = device_stack.enter_context(contextmanager(_booted)(tpm_factory))
            tpm = device_stack.enter_context(TPMDevice(device.tcti))
            at_r1 = device_stack.enter_context(httpx.Client(base_url=replicas[1].url, verify=verify, timeout=30))
            manual = ManualEnrollment(tpm, at_r1)
            challenge = manual.post("/v1/enroll/challenge", manual.challenge_body(node="gw-02"))
            assert challenge.status_code == 200, challenge.text
            body = manual.answer(challenge.json(), event_log=device.event_log)
        os.kill(replicas[1].pid, signal.SIGKILL)
        with httpx.Client(base_url=balancer.url, verify=verify, timeout=30) as via_balancer:
            done = via_balancer.post("/v1/enroll/complete", json=body)
        assert done.status_code == 200, done.text
        for replica in (replicas[0], replicas[2]):  # replayed at each survivor directly: refused by both
            with httpx.Client(base_url=replica.url, verify=verify, timeout=30) as direct:
                replay = direct.post("/v1/enroll/complete", json=body)
            assert replay.status_code == 403, replay.text
            assert "already answered once" in replay.json()["reason"]

    store = open_store(store_url)
    try:
        assert len(store.svids(NODE)) == 4  # one enrollment and three renewals, each recorded once
        gw02 = "spiffe://edge.example/site/lab/node/gw-02"
        assert [d.spiffe_id for d in store.devices() if d.spiffe_id == gw02] == [gw02]
        assert len(store.svids(gw02)) == 1
    finally:
        store.close()
