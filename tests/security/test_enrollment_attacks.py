"""Attacks on enrollment against a real trustd and real swtpms: weak attestation keys (SHA-1 signing schemes),
and round-1 bodies built to be stored (claims of any size)."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from attestation.device import TPMDevice
from edgetrust.protocol import b64
from localpeers.hub import RunningHub, golden_reference_values, running_hub
from tests.integration.conftest import BootedDevice
from tests.support.protocol import ManualEnrollment
from trustd.agent.enroll_client import enroll

pytestmark = pytest.mark.integration


def _pending_challenges(hub: RunningHub) -> int:
    with sqlite3.connect(hub.hub.settings.data_dir / "trustd.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM challenges").fetchone()[0])


@pytest.fixture
def legacy_hub(tmp_path: Path, ek_roots: Path) -> Iterator[RunningHub]:
    """The golden classes, plus a copy of edge-gateway whose operator opted in to SHA-1 quotes."""
    values = golden_reference_values()
    classes = values["device_classes"]
    assert isinstance(classes, dict)
    classes["legacy-vtpm"] = {**copy.deepcopy(classes["edge-gateway"]), "allow_sha1_quotes": True}
    with running_hub(tmp_path, ek_roots=ek_roots, reference_values=values) as running:
        yield running


@pytest.mark.parametrize(("kind", "scheme"), [("rsa-sha1", "RSASSA/SHA-1"), ("ecc-sha1", "ECDSA/SHA-1")])
def test_sha1_signing_ak_is_refused_at_round_one_naming_the_scheme(
    legacy_hub: RunningHub, golden_device: BootedDevice, kind: str, scheme: str
) -> None:
    with TPMDevice(golden_device.tcti) as tpm, legacy_hub.client() as http:
        ek = tpm.endorsement_key("rsa")
        ak = tpm.create_attestation_key(kind)  # type: ignore[arg-type]
        assert ek.certificate is not None
        body = {
            "ek_certificate": b64(ek.certificate),
            "ek_public": b64(ek.public),
            "ak_public": b64(ak.public),
            "device_class": "edge-gateway",  # a class that did not opt in
            "claims": {"site": "lab", "node": "gw-01"},
        }
        answer = http.post("/v1/enroll/challenge", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "unsupported_algorithm"
    assert scheme in answer.json()["reason"]
    assert "allow_sha1_quotes" in answer.json()["reason"]
    # refused before anything was stored: no challenge to answer, no device
    assert _pending_challenges(legacy_hub) == 0
    assert legacy_hub.hub.store.devices() == []
    refusal = legacy_hub.hub.store.audit_events()[0]
    assert refusal.outcome == "refused"
    assert refusal.detail["code"] == "unsupported_algorithm"
    assert scheme in refusal.detail["reason"]


def test_sha1_signing_ak_enrolls_only_in_a_class_that_opts_in_and_the_audit_records_it(
    legacy_hub: RunningHub, golden_device: BootedDevice, tmp_path: Path
) -> None:
    result = enroll(
        server=legacy_hub.url,
        tcti=golden_device.tcti,
        out_dir=tmp_path / "svid",
        device_class="legacy-vtpm",
        claims={"site": "lab", "node": "old-01"},
        ca_bundle=legacy_hub.ca_bundle,
        event_log=golden_device.event_log,
        ak_kind="rsa-sha1",  # and the quote the swtpm signs is a real SHA-1 one
    )
    assert result.spiffe_id == "spiffe://edge.example/site/lab/node/old-01"
    (device,) = legacy_hub.hub.store.devices()
    assert device.device_class == "legacy-vtpm"
    enrolled = next(e for e in legacy_hub.hub.store.audit_events() if e.event == "enroll.complete")
    assert enrolled.outcome == "enrolled"
    assert enrolled.detail["ak_scheme"] == "RSASSA/SHA-1"
    assert "allow_sha1_quotes" in enrolled.detail["sha1_quotes"]


def test_sha256_ak_enrollment_records_no_sha1_opt_in(legacy_hub: RunningHub, golden_device: BootedDevice) -> None:
    with TPMDevice(golden_device.tcti) as tpm, legacy_hub.client() as http:
        answer = ManualEnrollment(tpm, http).run(event_log=golden_device.event_log, device_class="legacy-vtpm")
    assert answer.status_code == 200, answer.text
    enrolled = next(e for e in legacy_hub.hub.store.audit_events() if e.event == "enroll.complete")
    assert enrolled.detail["ak_scheme"] == "ECDSA/SHA-256"
    assert "sha1_quotes" not in enrolled.detail


def test_oversized_claims_are_refused_whole_with_the_limit_named(hub: RunningHub, golden_device: BootedDevice) -> None:
    with TPMDevice(golden_device.tcti) as tpm, hub.client() as http:
        manual = ManualEnrollment(tpm, http)
        for claims, limit in (
            ({"site": "lab", "node": "x" * (340 * 1024)}, "claim values are limited to 256"),
            ({"site": "lab", "node": "gw", "k" * 65: "v"}, "claim names are limited to 64"),
        ):
            answer = manual.post("/v1/enroll/challenge", dict(manual.challenge_body(), claims=claims))
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"] == "claims_too_large"
            assert limit in answer.json()["reason"]
        assert _pending_challenges(hub) == 0  # nothing stored, not even a truncated copy
        # the same device with claims within the limits is answered
        assert manual.post("/v1/enroll/challenge", manual.challenge_body()).status_code == 200
    assert _pending_challenges(hub) == 1
