"""Sigstore keyless signatures on images, verified offline against a trust root the operator ships.

The bundle (Fulcio certificate, Rekor entry with inclusion proof/promise) travels with the image as an OCI
referrer. sigstore-python checks the certificate chain, SCT, log inclusion and identity; we add the one check
it cannot know: that what was signed is *this* image digest, either as the message digest of a plain signature
or as a subject of a DSSE in-toto statement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from sigstore.errors import Error as SigstoreError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import AnyOf, Identity
from sigstore_models.common.v1 import HashAlgorithm

from admission.errors import ConfigError, NoSignatureError, PayloadMismatchError, RegistryError, SignatureError
from admission.imageref import ImageReference
from admission.policy import KeylessIdentity
from admission.registry import RegistryClient

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_BUNDLES = 16  # per image


@dataclass(frozen=True, slots=True)
class KeylessSignature:
    digest: str
    identity: str
    issuer: str


@lru_cache(maxsize=16)
def _verifier(trusted_root: Path, mtime_ns: int) -> Verifier:
    try:
        return Verifier(trusted_root=TrustedRoot.from_file(str(trusted_root)))
    except (SigstoreError, ValueError, OSError) as exc:
        raise ConfigError(f"trusted root {trusted_root}: {exc}") from exc


def verifier_for(trusted_root: Path) -> Verifier:
    return _verifier(trusted_root, trusted_root.stat().st_mtime_ns)


def check_bundle(
    bundle_json: bytes, digest: str, trusted_root: Path, identities: Sequence[KeylessIdentity]
) -> KeylessSignature:
    """Verify one bundle as a signature over image `digest` by one of `identities`."""
    if not identities:
        raise ConfigError("a keyless policy needs at least one identity")
    try:
        bundle = Bundle.from_json(bundle_json)
    except (SigstoreError, ValueError) as exc:
        raise SignatureError(f"Sigstore bundle is malformed: {exc}") from exc
    policy = AnyOf([Identity(identity=i.subject, issuer=i.issuer) for i in identities])
    verifier = verifier_for(trusted_root)
    _algorithm, _, hex_digest = digest.partition(":")
    try:
        if bundle._dsse_envelope is not None:
            payload_type, payload = verifier.verify_dsse(bundle, policy)
            _check_statement(payload_type, payload, hex_digest, digest)
        else:
            hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_digest))
            verifier.verify_artifact(hashed, bundle, policy)
    except SigstoreError as exc:
        raise SignatureError(f"Sigstore bundle rejected: {exc}") from exc
    certificate = bundle.signing_certificate
    signer = next((i for i in identities if _has_san(certificate, i.subject)), identities[0])
    return KeylessSignature(digest=digest, identity=signer.subject, issuer=signer.issuer)


def _has_san(certificate: object, subject: str) -> bool:
    if not isinstance(certificate, x509.Certificate):
        return False
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    values = san.get_values_for_type(x509.RFC822Name) + san.get_values_for_type(x509.UniformResourceIdentifier)
    return subject in values


def _check_statement(payload_type: str, payload: bytes, hex_digest: str, digest: str) -> None:
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise PayloadMismatchError(f"DSSE payload type {payload_type!r} is not an in-toto statement")
    try:
        statement = json.loads(payload)
        subjects = statement["subject"]
        named = {s["digest"]["sha256"] for s in subjects if isinstance(s, dict) and "sha256" in s.get("digest", {})}
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadMismatchError("DSSE payload is not an in-toto statement with subjects") from exc
    if hex_digest not in named:
        raise PayloadMismatchError(f"in-toto statement does not name {digest} among its subjects")


async def verify_keyless(
    registry: RegistryClient,
    image: ImageReference,
    digest: str,
    trusted_root: Path,
    identities: Sequence[KeylessIdentity],
) -> KeylessSignature:
    """Find a Sigstore bundle attached to `digest` that verifies; every rejected candidate's reason is kept."""
    referrers = await registry.referrers(image, digest, BUNDLE_MEDIA_TYPE)
    if not referrers:
        raise NoSignatureError(f"{image.name}@{digest} has no Sigstore bundle attached")
    reasons: list[str] = []
    for descriptor in referrers[:MAX_BUNDLES]:
        try:
            manifest = await registry.manifest(image, str(descriptor.get("digest", "")))
            layers = [layer for layer in manifest.layers if layer.get("mediaType") == BUNDLE_MEDIA_TYPE]
            if not layers:
                reasons.append("a bundle artifact holds no bundle layer")
                continue
            bundle_json = await registry.blob(image, str(layers[0].get("digest", "")))
            return check_bundle(bundle_json, digest, trusted_root, identities)
        except (SignatureError, RegistryError) as exc:
            if exc.code == "registry_unreachable":
                raise
            reasons.append(str(exc))
    raise SignatureError(f"{image.name}@{digest}: no valid Sigstore bundle: " + "; ".join(reasons))
