"""Two trustd replicas (each a real hub over TLS) on one real PostgreSQL, with real swtpm devices: a challenge
begun at one replica is answered at the other, and replayed at the first is refused; two TPMs racing for one
name through the two replicas get one identity between them; a revocation made at one is served by the other;
PostgreSQL restarted mid-run, the replicas carry on, with no SVID lost or recorded twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from attestation.device import TPMDevice
from localpeers.hub import RunningHub, running_hub
from localpeers.postgres import PostgresServer, running_postgres
from localpeers.softhsm import SoftToken
from localpeers.swtpm import SoftwareTPMFactory
from localpeers.tlsca import TestCA
from tests.integration.conftest import BootedDevice, _booted
from tests.support.protocol import ManualEnrollment
from tests.support.waiting import until
from trustd.server.ca import material
from trustd.server.settings import TrustdSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


@pytest.fixture
def replicas(
    tmp_path: Path, ek_roots: Path, postgres: PostgresServer, soft_token: SoftToken
) -> Iterator[tuple[RunningHub, RunningHub]]:
    url = postgres.new_database()
    # replicas share the trust domain's CA and revocation key on one PKCS#11 token, made once (`trustd ca init`)
    material.init(TrustdSettings(data_dir=tmp_path / "init", pkcs11_module=soft_token.module,
                                 pkcs11_token=soft_token.label, pkcs11_pin_file=soft_token.pin_file))  # fmt: skip
    with (
        running_hub(tmp_path / "a", ek_roots=ek_roots, store_url=url, pkcs11_module=soft_token.module,
                    pkcs11_token=soft_token.label, pkcs11_pin_file=soft_token.pin_file) as a,
        running_hub(tmp_path / "b", ek_roots=ek_roots, store_url=url, pkcs11_module=soft_token.module,
                    pkcs11_token=soft_token.label, pkcs11_pin_file=soft_token.pin_file) as b,
    ):  # fmt: skip
        assert a.hub.ca.bundle() == b.hub.ca.bundle()
        yield a, b


def enroll_across(device: BootedDevice, begin: RunningHub, finish: RunningHub, node: str) -> httpx.Response:
    with TPMDevice(device.tcti) as tpm, begin.client() as first, finish.client() as second:
        manual = ManualEnrollment(tpm, first)
        challenge = manual.post("/v1/enroll/challenge", manual.challenge_body(node=node))
        assert challenge.status_code == 200, challenge.text
        body = manual.answer(challenge.json(), event_log=device.event_log)
        return second.post("/v1/enroll/complete", json=body)


def test_a_challenge_begun_at_one_replica_completes_at_the_other_once(
    replicas: tuple[RunningHub, RunningHub], golden_device: BootedDevice
) -> None:
    a, b = replicas
    with TPMDevice(golden_device.tcti) as tpm, a.client() as at_a, b.client() as at_b:
        manual = ManualEnrollment(tpm, at_a)
        challenge = manual.post("/v1/enroll/challenge", manual.challenge_body(node="gw-01")).json()
        body = manual.answer(challenge, event_log=golden_device.event_log)
        done = at_b.post("/v1/enroll/complete", json=body)
        assert done.status_code == 200, done.text
        replay = at_a.post("/v1/enroll/complete", json=body)
    assert replay.status_code == 403
    assert "already answered once" in replay.json()["reason"]
    assert [d.spiffe_id for d in a.hub.store.devices()] == ["spiffe://edge.example/site/lab/node/gw-01"]


def test_two_tpms_racing_for_one_name_through_two_replicas(
    replicas: tuple[RunningHub, RunningHub], tpm_factory: SoftwareTPMFactory
) -> None:
    a, b = replicas
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(2)
    with ExitStack() as stack:
        prepared = []
        for hub in (a, b):
            device = stack.enter_context(contextmanager(_booted)(tpm_factory))
            tpm = stack.enter_context(TPMDevice(device.tcti))
            client = stack.enter_context(hub.client())
            manual = ManualEnrollment(tpm, client)
            challenge = manual.post("/v1/enroll/challenge", manual.challenge_body(node="gw-07")).json()
            prepared.append((client, manual.answer(challenge, event_log=device.event_log)))

        def complete(client: httpx.Client, body: dict[str, object]) -> None:
            barrier.wait()
            answers.append(client.post("/v1/enroll/complete", json=body))

        threads = [threading.Thread(target=complete, args=pair) for pair in prepared]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # the loser's name is held by another TPM: a conflict (409), not a refusal of the device (since issue 12)
    assert sorted(r.status_code for r in answers) == [200, 409]
    refused = next(r for r in answers if r.status_code == 409).json()
    assert refused["error"] == "identity_conflict"
    assert "spiffe://edge.example/site/lab/node/gw-07 is already held by another TPM" in refused["reason"]
    holders = [d for d in b.hub.store.devices() if d.spiffe_id.endswith("/gw-07")]
    assert len(holders) == 1
    assert len(a.hub.store.svids(holders[0].spiffe_id)) == 1


def test_revocation_at_one_replica_is_served_by_the_other_and_a_restart_loses_nothing(
    replicas: tuple[RunningHub, RunningHub], golden_device: BootedDevice, postgres: PostgresServer
) -> None:
    a, b = replicas
    assert enroll_across(golden_device, a, b, "gw-01").status_code == 200
    a.hub.revocations.revoke("gw-01", reason="stolen", by="spiffe://edge.example/operator/admin")
    until(  # b's revocation watcher notices within a second or two
        lambda: b.hub.revocations.current().counter == a.hub.revocations.current().counter,
        "replica b to see the revocation made at replica a",
        timeout_s=10,
    )
    assert b.hub.revocations.is_revoked("spiffe://edge.example/site/lab/node/gw-01")
    assert b.hub.revocations.current().etag == a.hub.revocations.current().etag

    postgres.restart()  # mid-run: every replica's connection is cut
    again = enroll_across(golden_device, b, a, "gw-01")
    assert again.status_code == 403  # the store came back with the revocation in it
    assert "was revoked" in again.json()["reason"]
    svids = a.hub.store.svids("spiffe://edge.example/site/lab/node/gw-01")
    assert len(svids) == 1
    assert len({s.serial for s in svids}) == 1
