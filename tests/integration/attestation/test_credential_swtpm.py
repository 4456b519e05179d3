"""Our software MakeCredential against a real TPM's ActivateCredential, for RSA and ECC (P-384) EKs."""

from __future__ import annotations

import os

import pytest

from attestation.credential import make_credential
from attestation.device import TPMDevice
from attestation.errors import CredentialActivationError, TPMDeviceError
from attestation.tpm2.public import parse_public
from tests.integration.conftest import BootedDevice

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("template", "ak_kind"), [("EK-RSA2048", "ecc"), ("EK-ECC256", "ecc"), ("EK-RSA2048", "rsa")])
def test_the_tpm_recovers_our_secret(golden_device: BootedDevice, template: str, ak_kind: str) -> None:
    with TPMDevice(golden_device.tcti) as tpm:
        # swtpm certifies only a high-range ECC EK; the low-range P-256 EK is the same key type without a cert.
        ek = parse_public(tpm.endorsement_key(template_name=template).public)
        ak = tpm.create_attestation_key(ak_kind)  # type: ignore[arg-type]
        assert parse_public(ak.public).name == ak.name
        secret = os.urandom(32)
        credential = make_credential(ek, secret, ak.name)
        assert tpm.activate_credential(credential.blob, credential.encrypted_secret) == secret


def test_a_credential_for_another_name_is_refused_by_the_tpm(golden_device: BootedDevice) -> None:
    with TPMDevice(golden_device.tcti) as tpm:
        ek = parse_public(tpm.endorsement_key("rsa").public)
        ak = tpm.create_attestation_key("ecc")
        other_name = ak.name[:2] + bytes(b ^ 0xFF for b in ak.name[2:])
        credential = make_credential(ek, os.urandom(32), other_name)
        with pytest.raises(CredentialActivationError, match="same TPM"):
            tpm.activate_credential(credential.blob, credential.encrypted_secret)


def test_garbage_credential_is_a_clear_error(golden_device: BootedDevice) -> None:
    with TPMDevice(golden_device.tcti) as tpm:
        tpm.endorsement_key("rsa")
        tpm.create_attestation_key("ecc")
        with pytest.raises(CredentialActivationError):
            tpm.activate_credential(b"\x00\x05abc", b"\x00")


def test_high_range_ek_policy_is_refused_clearly(golden_device: BootedDevice) -> None:
    with TPMDevice(golden_device.tcti) as tpm:
        ek = tpm.endorsement_key("ecc")  # swtpm's certified ECC EK is EK-HIGH-ECC384
        assert ek.certificate is not None
        tpm.create_attestation_key("ecc")
        credential = make_credential(parse_public(ek.public), os.urandom(32), b"\x00\x0b" + b"\x00" * 32)
        with pytest.raises(TPMDeviceError, match="--ek rsa"):
            tpm.activate_credential(credential.blob, credential.encrypted_secret)
