"""Enrollment end to end: a real swtpm, a real trustd over TLS, the device-side client.

Every refusal is checked for its reason code, and for leaving nothing recorded as enrolled.
"""

from __future__ import annotations

import base64
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from attestation.device import TPMDevice
from attestation.errors import CredentialActivationError
from localpeers.hub import GOLDEN_BANKS, RunningHub, running_hub
from localpeers.simboot import boot_events, measure_boot, write_event_log
from localpeers.swtpm import SoftwareTPMFactory
from tests.integration.conftest import BootedDevice
from tests.support.protocol import ManualEnrollment
from trustd.agent.enroll_client import enroll
from trustd.cli.trustctl import main as trustctl
from trustd.errors import EnrollmentError

pytestmark = pytest.mark.integration


def _assert_nothing_enrolled(hub: RunningHub, code: str) -> None:
    assert hub.hub.store.devices() == []
    refusals = [e for e in hub.hub.store.audit_events() if e.outcome == "refused"]
    assert refusals, "a refusal must be audited"
    assert refusals[0].detail["code"] == code


@pytest.fixture
def manual(hub: RunningHub, golden_device: BootedDevice) -> Iterator[ManualEnrollment]:
    with TPMDevice(golden_device.tcti) as tpm, hub.client() as http:
        yield ManualEnrollment(tpm, http)


def test_enrolled_device_gets_an_x509_svid_bound_to_its_tpm(
    hub: RunningHub, golden_device: BootedDevice, tmp_path: Path
) -> None:
    result = enroll(
        server=hub.url,
        tcti=golden_device.tcti,
        out_dir=tmp_path / "svid",
        device_class="edge-gateway",
        claims={"site": "lab", "node": "gw-01"},
        ca_bundle=hub.ca_bundle,
        event_log=golden_device.event_log,
        jwt_audiences=("spiffe://edge.example/hub",),
    )
    assert result.spiffe_id == "spiffe://edge.example/site/lab/node/gw-01"
    assert stat.S_IMODE(result.key_path.stat().st_mode) == 0o600

    chain = x509.load_pem_x509_certificates(result.svid_path.read_bytes())
    roots = x509.load_pem_x509_certificates(result.bundle_path.read_bytes())
    leaf = chain[0]
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == [result.spiffe_id]
    PolicyBuilder().store(Store(roots)).build_client_verifier().verify(leaf, chain[1:])

    devices = hub.hub.store.devices()
    assert [d.spiffe_id for d in devices] == [result.spiffe_id]
    assert devices[0].device_class == "edge-gateway"
    assert [s.serial for s in hub.hub.store.svids(result.spiffe_id)] == [f"{leaf.serial_number:x}"]
    token = result.jwt_svids["spiffe://edge.example/hub"]
    assert str(hub.hub.ca.validate_jwt_svid(token, audience="spiffe://edge.example/hub")) == result.spiffe_id


def test_trustctl_enroll_prints_the_spiffe_id(
    hub: RunningHub, golden_device: BootedDevice, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "eventlog.bin"
    log.write_bytes(golden_device.event_log)
    code = trustctl(
        [
            "enroll",
            "--server",
            hub.url,
            "--ca-bundle",
            str(hub.ca_bundle),
            "--tpm",
            golden_device.tcti,
            "--device-class",
            "edge-gateway",
            "--site",
            "lab",
            "--node",
            "gw-07",
            "--event-log",
            str(log),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "enrolled as spiffe://edge.example/site/lab/node/gw-07" in out


def test_sha1_bank_and_rsa_ak(hub: RunningHub, golden_device: BootedDevice, tmp_path: Path) -> None:
    result = enroll(
        server=hub.url,
        tcti=golden_device.tcti,
        out_dir=tmp_path,
        device_class="legacy-sha1",
        claims={"site": "lab", "node": "old-1"},
        ca_bundle=hub.ca_bundle,
        ak_kind="rsa",
    )
    assert result.spiffe_id.endswith("/node/old-1")


def test_tampered_boot_is_refused_naming_the_pcr(
    hub: RunningHub, tampered_device: BootedDevice, tmp_path: Path
) -> None:
    code = trustctl(
        [
            "enroll",
            "--server",
            hub.url,
            "--ca-bundle",
            str(hub.ca_bundle),
            "--tpm",
            tampered_device.tcti,
            "--device-class",
            "edge-gateway",
            "--site",
            "lab",
            "--node",
            "gw-02",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    with pytest.raises(EnrollmentError, match=r"PCR 4 \(sha256\)"):
        enroll(
            server=hub.url,
            tcti=tampered_device.tcti,
            out_dir=tmp_path,
            device_class="edge-gateway",
            claims={"site": "lab", "node": "gw-02"},
            ca_bundle=hub.ca_bundle,
            event_log=tampered_device.event_log,
        )
    _assert_nothing_enrolled(hub, "pcr_policy_violation")
    assert not (tmp_path / "svid.key").exists()


def test_untrusted_ek_root(golden_device: BootedDevice, tmp_path: Path) -> None:
    other = SoftwareTPMFactory(tmp_path / "other-vendor")
    other.provision("x")
    roots = tmp_path / "other-roots"
    roots.mkdir()
    shutil.copy(other.root_cert_path, roots / "root.pem")
    shutil.copy(other.issuer_cert_path, roots / "intermediate.pem")
    with running_hub(tmp_path / "h", ek_roots=roots) as hub:
        with pytest.raises(EnrollmentError, match="untrusted_ek"):
            enroll(
                server=hub.url,
                tcti=golden_device.tcti,
                out_dir=tmp_path / "o",
                device_class="edge-gateway",
                claims={"site": "lab", "node": "gw-01"},
                ca_bundle=hub.ca_bundle,
                event_log=golden_device.event_log,
            )
        _assert_nothing_enrolled(hub, "untrusted_ek")


def test_ek_certificate_not_matching_the_ek(manual: ManualEnrollment, hub: RunningHub) -> None:
    body = manual.challenge_body()
    body["ek_public"] = b64_of(manual.tpm.endorsement_key("ecc").public)  # the ECC EK, with the RSA EK's cert
    answer = manual.post("/v1/enroll/challenge", body)
    assert answer.status_code == 403
    assert answer.json()["error"] == "ek_mismatch"
    _assert_nothing_enrolled(hub, "ek_mismatch")


def test_ak_from_another_tpm_cannot_activate(
    hub: RunningHub, golden_device: BootedDevice, tpm_factory: SoftwareTPMFactory
) -> None:
    other = tpm_factory.start()
    try:
        with TPMDevice(golden_device.tcti) as tpm, TPMDevice(other.tcti) as foreign, hub.client() as http:
            device = ManualEnrollment(tpm, http)
            device.ak = foreign.create_attestation_key("ecc")  # claims an AK that lives in another TPM
            challenge = device.post("/v1/enroll/challenge", device.challenge_body()).json()
            # The device's own TPM refuses: the credential names an AK it does not hold.
            with pytest.raises(CredentialActivationError):
                tpm.activate_credential(
                    base64.b64decode(challenge["credential_blob"]),
                    base64.b64decode(challenge["encrypted_secret"]),
                )
            # Guessing the secret does not help either.
            body = device.answer(challenge, event_log=golden_device.event_log, secret=b"\x00" * 32)
            answer = device.post("/v1/enroll/complete", body)
    finally:
        other.stop()
    assert answer.status_code == 403
    assert answer.json()["error"] == "activation_failed"
    _assert_nothing_enrolled(hub, "activation_failed")


def test_replayed_challenge_is_refused(manual: ManualEnrollment, golden_device: BootedDevice, hub: RunningHub) -> None:
    challenge = manual.post("/v1/enroll/challenge", manual.challenge_body()).json()
    body = manual.answer(challenge, event_log=golden_device.event_log)
    assert manual.post("/v1/enroll/complete", body).status_code == 200
    replay = manual.post("/v1/enroll/complete", body)
    assert replay.status_code == 403
    assert replay.json()["error"] == "challenge_invalid"
    assert "already answered" in replay.json()["reason"]
    assert len(hub.hub.store.devices()) == 1


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda b: b.update(attest=flip_last_byte(b["attest"])), "bad_quote_signature"),
        (lambda b: b["pcr_values"]["sha256"].update({"4": "00" * 32}), "pcr_digest_mismatch"),
        (lambda b: b.update(attest="not base64!"), "malformed_evidence"),
        (lambda b: b.update(attest=base64.b64encode(b"\xff\x54\x43").decode()), "bad_quote_signature"),
    ],
    ids=["tampered-quote-byte", "pcr-values-not-matching-digest", "garbage-base64", "truncated-attest"],
)
def test_tampered_evidence_is_refused(
    manual: ManualEnrollment, golden_device: BootedDevice, hub: RunningHub, tamper: object, code: str
) -> None:
    answer = manual.run(event_log=golden_device.event_log, tamper=tamper)  # type: ignore[arg-type]
    assert answer.status_code in (400, 403)
    assert answer.json()["error"] == code, answer.json()
    _assert_nothing_enrolled(hub, code)


def test_event_log_that_does_not_replay_to_the_quote(manual: ManualEnrollment, hub: RunningHub) -> None:
    lying_log = write_event_log(boot_events(kernel=b"another kernel"), GOLDEN_BANKS)
    answer = manual.run(event_log=lying_log)
    assert answer.status_code == 403
    assert answer.json()["error"] == "event_log_invalid"
    _assert_nothing_enrolled(hub, "event_log_invalid")


def test_missing_required_event_log(manual: ManualEnrollment, hub: RunningHub) -> None:
    answer = manual.run(event_log=None)
    assert answer.status_code == 403
    assert answer.json()["error"] == "pcr_policy_violation"
    _assert_nothing_enrolled(hub, "pcr_policy_violation")


def test_unknown_device_class_is_refused_before_any_challenge(manual: ManualEnrollment, hub: RunningHub) -> None:
    answer = manual.post("/v1/enroll/challenge", manual.challenge_body(device_class="toaster"))
    assert answer.status_code == 403
    assert "edge-gateway" in answer.json()["reason"]


def test_another_tpm_cannot_take_an_enrolled_name(
    hub: RunningHub, golden_device: BootedDevice, tpm_factory: SoftwareTPMFactory, tmp_path: Path
) -> None:
    claims = {"site": "lab", "node": "gw-01"}
    enroll(
        server=hub.url,
        tcti=golden_device.tcti,
        out_dir=tmp_path / "a",
        device_class="legacy-sha1",
        claims=claims,
        ca_bundle=hub.ca_bundle,
    )
    other = tpm_factory.start()
    try:
        with TPMDevice(other.tcti) as device:
            measure_boot(device, boot_events(), GOLDEN_BANKS)
        with pytest.raises(EnrollmentError, match="already held by another TPM"):
            enroll(
                server=hub.url,
                tcti=other.tcti,
                out_dir=tmp_path / "b",
                device_class="legacy-sha1",
                claims=claims,
                ca_bundle=hub.ca_bundle,
            )
    finally:
        other.stop()
    assert len(hub.hub.store.devices()) == 1


def test_plain_http_is_refused(golden_device: BootedDevice, hub: RunningHub, tmp_path: Path) -> None:
    with pytest.raises(EnrollmentError, match="only reached over https"):
        enroll(
            server=hub.url.replace("https", "http"),
            tcti=golden_device.tcti,
            out_dir=tmp_path,
            device_class="edge-gateway",
            claims={},
            ca_bundle=hub.ca_bundle,
        )


def b64_of(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flip_last_byte(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[-1] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_a_revoked_device_may_not_enroll_again(hub: RunningHub, golden_device: BootedDevice, tmp_path: Path) -> None:
    def enroll_gw(name: str) -> str:
        return enroll(
            server=hub.url,
            tcti=golden_device.tcti,
            out_dir=tmp_path / name,
            device_class="edge-gateway",
            claims={"site": "lab", "node": name},
            ca_bundle=hub.ca_bundle,
            event_log=golden_device.event_log,
        ).spiffe_id

    spiffe_id = enroll_gw("gw-01")
    revoked = hub.hub.revocations.revoke("gw-01", reason="stolen", by="spiffe://edge.example/operator/admin")
    assert revoked.spiffe_id == spiffe_id
    with pytest.raises(
        EnrollmentError, match=r"this TPM's device \(spiffe://edge.example/site/lab/node/gw-01\) was revoked"
    ):
        enroll_gw("gw-01")
    with pytest.raises(EnrollmentError, match="was revoked"):  # nor under a new name: the TPM itself is barred
        enroll_gw("gw-02")
    assert [d.status for d in hub.hub.store.devices()] == ["revoked"]
