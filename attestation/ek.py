"""Is this endorsement key really in a TPM made by a manufacturer we trust?

The EK certificate is the only link between a key and a piece of silicon: a vendor CA signed it at the
factory. We validate its chain to the operator's configured roots (one PEM/DER file per vendor root in a
directory; intermediates may sit beside them or come from the device), then require that the EK public
area the device presents is the key in that certificate, with the attributes of a real EK.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from attestation.errors import (
    AKAttributesError,
    EKMismatchError,
    MalformedStructureError,
    PolicyConfigError,
    UntrustedEKError,
)
from attestation.tpm2.constants import TPMA_OBJECT
from attestation.tpm2.public import TpmPublic

#: EK certificates sit under a root and one or two vendor intermediates; deeper chains are not TPM chains
MAX_CHAIN_DEPTH = 4
#: a device may send its own intermediates (from NV or AIA); more than this is an attempt to waste CPU
MAX_DEVICE_INTERMEDIATES = 4

_EK_REQUIRED = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
_CERT_SUFFIXES = {".pem", ".crt", ".cer", ".der"}


@dataclass(frozen=True, slots=True)
class VerifiedEK:
    """An EK whose certificate chains to a trusted manufacturer root and whose key matches it."""

    certificate: x509.Certificate
    public: TpmPublic
    chain: tuple[x509.Certificate, ...]
    #: hex SHA-256 of the EK's SubjectPublicKeyInfo: the stable identity of the TPM
    fingerprint: str


def ek_fingerprint(public: TpmPublic) -> str:
    spki = public.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def load_certificate(data: bytes, *, what: str) -> x509.Certificate:
    """Parse one certificate in PEM or DER; anything else is malformed evidence, not a crash."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise MalformedStructureError(f"{what} is not a valid X.509 certificate (PEM or DER): {exc}") from exc


def _load_certificates(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise PolicyConfigError(f"{path} holds no readable certificate: {exc}") from exc


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class EKVerifier:
    """Validates EK certificates against the manufacturer roots an operator configured."""

    def __init__(self, *, roots: Sequence[x509.Certificate], intermediates: Sequence[x509.Certificate] = ()) -> None:
        if not roots:
            # Fail closed: no configured root must never mean "trust any EK".
            raise PolicyConfigError("no EK manufacturer roots configured; add the TPM vendors' root certificates")
        self._store = Store(list(roots))
        self._intermediates = tuple(intermediates)
        self.roots = tuple(roots)

    @classmethod
    def from_directory(cls, directory: Path) -> EKVerifier:
        """Self-signed certificates in the directory become roots, the others intermediates."""
        if not directory.is_dir():
            raise PolicyConfigError(f"EK roots directory {directory} does not exist")
        roots: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in _CERT_SUFFIXES):
            for cert in _load_certificates(path):
                (roots if _is_self_signed(cert) else intermediates).append(cert)
        return cls(roots=roots, intermediates=intermediates)

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> EKVerifier:
        roots: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        for path in paths:
            for cert in _load_certificates(path):
                (roots if _is_self_signed(cert) else intermediates).append(cert)
        return cls(roots=roots, intermediates=intermediates)

    def verify(
        self,
        *,
        ek_certificate: bytes,
        ek_public: TpmPublic,
        intermediates: Sequence[bytes] = (),
        now: datetime | None = None,
    ) -> VerifiedEK:
        """Check, in order: (1) the certificate parses; (2) it chains to a configured root; (3) the EK public area
        has the attributes of an endorsement key; (4) its key is the certificate's key."""
        cert = load_certificate(ek_certificate, what="EK certificate")
        if len(intermediates) > MAX_DEVICE_INTERMEDIATES:
            raise MalformedStructureError(
                f"device sent {len(intermediates)} intermediate certificates; "
                f"at most {MAX_DEVICE_INTERMEDIATES} are accepted"
            )
        untrusted = list(self._intermediates)
        untrusted += [load_certificate(c, what="EK intermediate certificate") for c in intermediates]

        # TPM EK certificates are not web certificates: a critical SAN directoryName with a subject, an EK
        # EKU (2.23.133.8.1), no serverAuth. The leaf policy therefore permits any extension; the CA side
        # keeps the WebPKI CA rules (basicConstraints CA, keyCertSign), so only CAs can sign EKs.
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now or datetime.now(UTC))
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(cert, untrusted)
        except VerificationError as exc:
            raise UntrustedEKError(
                f"EK certificate (issuer {cert.issuer.rfc4514_string()!r}, serial {cert.serial_number:x}) does not "
                f"chain to a configured TPM manufacturer root: {exc}. If this vendor is legitimate, add its root "
                "certificate to the EK roots directory."
            ) from exc

        if not ek_public.has_attributes(_EK_REQUIRED) or ek_public.has_attributes(TPMA_OBJECT.SIGN_ENCRYPT):
            raise AKAttributesError(
                f"the presented EK has attributes 0x{ek_public.attributes:08x}; an endorsement key must be a "
                "restricted, fixedTPM, fixedParent decryption key"
            )

        cert_spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        ek_spki = ek_public.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if cert_spki != ek_spki:
            raise EKMismatchError(
                "the EK public key the device presented is not the key in its EK certificate "
                f"(certificate key SHA-256 {hashlib.sha256(cert_spki).hexdigest()[:16]}…, presented "
                f"{hashlib.sha256(ek_spki).hexdigest()[:16]}…); the device must send the EK whose certificate it reads"
            )
        return VerifiedEK(
            certificate=cert,
            public=ek_public,
            chain=tuple(verified.chain),
            fingerprint=hashlib.sha256(ek_spki).hexdigest(),
        )
