"""Sigstore keyless signatures on images, verified offline against a trust root the operator ships.

The bundle (Fulcio certificate, Rekor entry with inclusion proof/promise) travels with the image as an OCI
referrer (cosign v3's default, sigstore-python's). sigstore-python checks the certificate chain, SCT, log
inclusion and identity; we add the one check it cannot know: that what was signed is *this* image digest, in
the digest's own algorithm, either as the message digest of a plain signature or as a subject of a DSSE in-toto
statement. The signer recorded is the policy identity whose subject *and* issuer the certificate carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from sigstore.errors import Error as SigstoreError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import AnyOf, Identity
from sigstore_models.common.v1 import HashAlgorithm

from admission.bundles import attached_bundles, check_statement
from admission.errors import ConfigError, NoSignatureError, PayloadMismatchError, SignatureError
from admission.imageref import ImageReference
from admission.policy import KeylessIdentity
from admission.registry import RegistryClient, split_digest

# What the verification stack raises on input it does not like: sigstore's own errors, pydantic's
# ValidationError (a ValueError), cryptography's InvalidSignature/UnsupportedAlgorithm, and the odd lookup error.
_FOREIGN = (
    SigstoreError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    InvalidSignature,
    UnsupportedAlgorithm,
)
_MESSAGE_ALGORITHMS = {"sha256": HashAlgorithm.SHA2_256}


@dataclass(frozen=True, slots=True)
class KeylessSignature:
    digest: str
    identity: str
    issuer: str


@lru_cache(maxsize=16)
def _verifier(trusted_root: Path, mtime_ns: int) -> Verifier:
    try:
        return Verifier(trusted_root=TrustedRoot.from_file(str(trusted_root)))
    except (*_FOREIGN, OSError) as exc:
        raise ConfigError(f"trusted root {trusted_root}: {exc}") from exc


def verifier_for(trusted_root: Path) -> Verifier:
    try:
        mtime_ns = trusted_root.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"trusted root {trusted_root}: {exc}") from exc
    return _verifier(trusted_root, mtime_ns)


def check_bundle(
    bundle_json: bytes, digest: str, trusted_root: Path, identities: Sequence[KeylessIdentity]
) -> KeylessSignature:
    """Verify one bundle as a signature over image `digest` by one of `identities`.

    Whatever sigstore-python, cryptography or the JSON layer raise on hostile input is converted here: a bundle
    is a signature that did not verify, never a crash of the request.
    """
    if not identities:
        raise ConfigError("a keyless policy needs at least one identity")
    algorithm, hex_digest = split_digest(digest)
    try:
        bundle = Bundle.from_json(bundle_json)
    except _FOREIGN as exc:
        raise SignatureError(f"Sigstore bundle is malformed: {exc}") from exc
    policy = AnyOf([Identity(identity=i.subject, issuer=i.issuer) for i in identities])
    verifier = verifier_for(trusted_root)
    try:
        if bundle._dsse_envelope is not None:
            payload_type, payload = verifier.verify_dsse(bundle, policy)
            check_statement(payload_type, payload, digest)
        else:
            verifier.verify_artifact(_message_digest(bundle, algorithm, hex_digest, digest), bundle, policy)
    except _FOREIGN as exc:
        raise SignatureError(f"Sigstore bundle rejected: {exc}") from exc
    signer = _signer(bundle.signing_certificate, identities)
    return KeylessSignature(digest=digest, identity=signer.subject, issuer=signer.issuer)


def _message_digest(bundle: Bundle, algorithm: str, hex_digest: str, digest: str) -> Hashed:
    """The digest a message signature must be over: the image digest, in the image digest's algorithm.

    A bundle's own `messageDigest` is optional and unsigned, so it is never believed; if present it must agree.
    Sigstore's hashedrekord entries are SHA-256 only, so a sha512 pin can only be signed by a DSSE statement.
    """
    if algorithm not in _MESSAGE_ALGORITHMS:
        raise PayloadMismatchError(
            f"a message signature cannot sign {digest}: Sigstore message signatures are over SHA-256 digests; "
            "sign a sha512-pinned image with an in-toto statement (cosign v3 does)"
        )
    claimed = bundle._inner.message_signature.message_digest if bundle._inner.message_signature else None
    if claimed is not None and (
        claimed.algorithm != _MESSAGE_ALGORITHMS[algorithm] or claimed.digest.hex() != hex_digest
    ):
        raise PayloadMismatchError(f"the bundle's message digest is not {digest}")
    return Hashed(algorithm=_MESSAGE_ALGORITHMS[algorithm], digest=bytes.fromhex(hex_digest))


def _signer(certificate: x509.Certificate, identities: Sequence[KeylessIdentity]) -> KeylessIdentity:
    """The policy identity the certificate satisfies: subject AND issuer, judged by sigstore's own policy check
    (the same one the verifier just applied), so what is recorded is who actually signed."""
    for identity in identities:
        try:
            Identity(identity=identity.subject, issuer=identity.issuer).verify(certificate)
        except _FOREIGN:
            continue
        return identity
    raise SignatureError("the signing certificate matches none of the policy's identities")


async def verify_keyless(
    registry: RegistryClient,
    image: ImageReference,
    digest: str,
    trusted_root: Path,
    identities: Sequence[KeylessIdentity],
) -> KeylessSignature:
    """Find a Sigstore bundle attached to `digest` that verifies; every rejected candidate's reason is kept."""
    reasons: list[str] = []
    bundles = await attached_bundles(registry, image, digest, reasons)
    if not bundles and not reasons:
        raise NoSignatureError(f"{image.name}@{digest} has no Sigstore bundle attached")
    for attached in bundles:
        try:
            return check_bundle(attached.body, digest, trusted_root, identities)
        except SignatureError as exc:
            reasons.append(str(exc))
    raise SignatureError(f"{image.name}@{digest}: no valid Sigstore bundle: " + "; ".join(reasons))
