"""EK certificate chains read from real swtpm NV, validated against the manufacturer's roots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from attestation.device import TPMDevice
from attestation.ek import EKVerifier, ek_fingerprint
from attestation.errors import EKMismatchError, MalformedStructureError, PolicyConfigError, UntrustedEKError
from attestation.tpm2.public import parse_public
from localpeers.swtpm import SoftwareTPMFactory
from tests.integration.conftest import BootedDevice

pytestmark = pytest.mark.integration


def test_genuine_rsa_and_ecc_eks_chain_to_the_manufacturer(golden_device: BootedDevice, ek_roots: Path) -> None:
    verifier = EKVerifier.from_directory(ek_roots)
    with TPMDevice(golden_device.tcti) as tpm:
        for kind in ("rsa", "ecc"):
            ek = tpm.endorsement_key(kind)  # type: ignore[arg-type]
            assert ek.certificate is not None
            public = parse_public(ek.public)
            verified = verifier.verify(ek_certificate=ek.certificate, ek_public=public)
            assert verified.fingerprint == ek_fingerprint(public)
            assert len(verified.chain) == 3  # EK, the manufacturer's intermediate, its root


def test_device_may_send_the_intermediate_itself(
    golden_device: BootedDevice, tpm_factory: SoftwareTPMFactory, tmp_path: Path
) -> None:
    shutil.copy(tpm_factory.root_cert_path, tmp_path / "root.pem")
    verifier = EKVerifier.from_directory(tmp_path)
    with TPMDevice(golden_device.tcti) as tpm:
        ek = tpm.endorsement_key("rsa")
    assert ek.certificate is not None
    with pytest.raises(UntrustedEKError, match="add its root"):
        verifier.verify(ek_certificate=ek.certificate, ek_public=parse_public(ek.public))
    verified = verifier.verify(
        ek_certificate=ek.certificate,
        ek_public=parse_public(ek.public),
        intermediates=[tpm_factory.issuer_cert_path.read_bytes()],
    )
    assert verified.certificate.serial_number > 0


def test_other_manufacturer_is_untrusted(golden_device: BootedDevice, tmp_path: Path) -> None:
    other = SoftwareTPMFactory(tmp_path / "other")
    other.provision("x")
    verifier = EKVerifier.from_files([other.root_cert_path, other.issuer_cert_path])
    with TPMDevice(golden_device.tcti) as tpm:
        ek = tpm.endorsement_key("rsa")
    assert ek.certificate is not None
    with pytest.raises(UntrustedEKError):
        verifier.verify(ek_certificate=ek.certificate, ek_public=parse_public(ek.public))


def test_certificate_of_one_ek_with_the_public_of_another(golden_device: BootedDevice, ek_roots: Path) -> None:
    with TPMDevice(golden_device.tcti) as tpm:
        rsa, ecc = tpm.endorsement_key("rsa"), tpm.endorsement_key("ecc")
    assert rsa.certificate is not None
    with pytest.raises(EKMismatchError, match="not the key in its EK certificate"):
        EKVerifier.from_directory(ek_roots).verify(ek_certificate=rsa.certificate, ek_public=parse_public(ecc.public))


def test_garbage_certificate_and_missing_roots(golden_device: BootedDevice, tmp_path: Path, ek_roots: Path) -> None:
    with TPMDevice(golden_device.tcti) as tpm:
        ek = tpm.endorsement_key("rsa")
    with pytest.raises(MalformedStructureError):
        EKVerifier.from_directory(ek_roots).verify(ek_certificate=b"\x30\x03abc", ek_public=parse_public(ek.public))
    with pytest.raises(PolicyConfigError, match="no EK manufacturer roots"):
        EKVerifier.from_directory(tmp_path)
    with pytest.raises(PolicyConfigError, match="does not exist"):
        EKVerifier.from_directory(tmp_path / "missing")
