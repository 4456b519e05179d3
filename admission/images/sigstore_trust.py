"""The operator's Sigstore trust root, loaded once per file version, and the two judgements both keyless layouts
(bundles, legacy `.sig`) need from it: which policy identity a certificate satisfies, and what counts as a
foreign exception from the verification stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import VerificationError as X509VerificationError
from sigstore.errors import Error as SigstoreError
from sigstore.models import TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import Identity

from admission.errors import ConfigError, SignatureError
from admission.policy import KeylessIdentity

# What the verification stack raises on input it does not like: sigstore's own errors, pydantic's
# ValidationError (a ValueError), cryptography's InvalidSignature/UnsupportedAlgorithm (and its x509
# verification errors, which are ValueErrors), JSON and base64 errors (ValueErrors), and the odd lookup error.
FOREIGN_ERRORS = (
    SigstoreError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    InvalidSignature,
    UnsupportedAlgorithm,
    X509VerificationError,
)


@lru_cache(maxsize=16)
def _trusted_root(path: Path, mtime_ns: int) -> TrustedRoot:
    try:
        return TrustedRoot.from_file(str(path))
    except (*FOREIGN_ERRORS, OSError) as exc:
        raise ConfigError(f"trusted root {path}: {exc}") from exc


@lru_cache(maxsize=16)
def _verifier(path: Path, mtime_ns: int) -> Verifier:
    try:
        return Verifier(trusted_root=_trusted_root(path, mtime_ns))
    except FOREIGN_ERRORS as exc:
        raise ConfigError(f"trusted root {path}: {exc}") from exc


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError as exc:  # the policy's file went away: a configuration problem, not a crash
        raise ConfigError(f"trusted root {path}: {exc}") from exc


def trusted_root_for(path: Path) -> TrustedRoot:
    return _trusted_root(path, _mtime(path))


def verifier_for(path: Path) -> Verifier:
    return _verifier(path, _mtime(path))


def signer_of(certificate: x509.Certificate, identities: Sequence[KeylessIdentity]) -> KeylessIdentity:
    """The policy identity the certificate satisfies: subject AND issuer, judged by sigstore's own policy check
    (the one the verifier applies), so that what is recorded is who actually signed."""
    for identity in identities:
        try:
            Identity(identity=identity.subject, issuer=identity.issuer).verify(certificate)
        except FOREIGN_ERRORS:
            continue
        return identity
    raise SignatureError("the signing certificate matches none of the policy's identities (subject and issuer)")
