"""Challenge expiry, on real swtpm evidence, with the hub's clock under the test's control."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from attestation.device import TPMDevice
from attestation.ek import EKVerifier
from attestation.refvalues import ReferencePolicy
from edgetrust.protocol import ChallengeRequest, EnrollRequest
from edgetrust.spiffe.id import TrustDomain
from localpeers.hub import golden_reference_values
from tests.integration.conftest import BootedDevice
from tests.support.protocol import ManualEnrollment
from trustd.errors import ChallengeError
from trustd.server.ca import SpiffeCA
from trustd.server.enrollment import EnrollmentPolicy, EnrollmentService
from trustd.server.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_an_expired_challenge_is_refused_and_nothing_is_enrolled(
    golden_device: BootedDevice, ek_roots: Path, tmp_path: Path
) -> None:
    clock = _Clock()
    store = SQLiteStore(tmp_path / "db")
    service = EnrollmentService(
        ek_verifier=EKVerifier.from_directory(ek_roots),
        reference_policy=ReferencePolicy.from_mapping(golden_reference_values(), source="test"),
        ca=SpiffeCA.load_or_create_root(tmp_path / "ca", trust_domain=TrustDomain.parse("edge.example")),
        store=store,
        policy=EnrollmentPolicy(
            spiffe_id_template="/site/{site}/node/{node}",
            svid_ttl=timedelta(hours=1),
            jwt_svid_ttl=timedelta(minutes=5),
            challenge_ttl=timedelta(seconds=60),
        ),
        clock=clock,
    )
    with TPMDevice(golden_device.tcti) as tpm:
        device = ManualEnrollment(tpm, http=None)  # type: ignore[arg-type]
        challenge = service.begin(ChallengeRequest(**device.challenge_body()))
        clock.now += 61
        body = device.answer(challenge.model_dump(), event_log=golden_device.event_log)
    with pytest.raises(ChallengeError, match="expired"):
        service.complete(EnrollRequest(**body))
    assert store.devices() == []
    assert store.audit_events()[0].detail["code"] == "challenge_invalid"
