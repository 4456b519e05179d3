"""Sigstore keyless signatures on images, verified offline against a trust root the operator ships.

The bundle (Fulcio certificate, Rekor entry with inclusion proof/promise) travels with the image as an OCI
referrer (cosign v3's default, sigstore-python's); cosign v2's legacy `.sig` layout is read by
admission/images/keyless_legacy.py. sigstore-python checks the certificate chain, SCT, log inclusion and identity; we
add the one check it cannot know: that what was signed is *this* image digest, in the digest's own algorithm,
either as the message digest of a plain signature or as a subject of a DSSE in-toto statement. The signer
recorded is the policy identity whose subject *and* issuer the certificate carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sigstore.hashes import Hashed
from sigstore.models import Bundle
from sigstore.verify.policy import AnyOf, Identity
from sigstore_models.common.v1 import HashAlgorithm

from admission.errors import ConfigError, NoSignatureError, PayloadMismatchError, RegistryError, SignatureError
from admission.imageref import ImageReference
from admission.images.bundles import attached_bundles, check_statement
from admission.images.cosign import signature_manifest, simple_signing_layers
from admission.images.keyless_legacy import check_legacy_keyless, is_keyless_layer
from admission.images.sigstore_trust import FOREIGN_ERRORS, signer_of, verifier_for
from admission.policy import KeylessIdentity
from admission.registry import RegistryClient, split_digest

_MESSAGE_ALGORITHMS = {"sha256": HashAlgorithm.SHA2_256}


@dataclass(frozen=True, slots=True)
class KeylessSignature:
    digest: str
    identity: str
    issuer: str


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
    except FOREIGN_ERRORS as exc:
        raise SignatureError(f"Sigstore bundle is malformed: {exc}") from exc
    policy = AnyOf([Identity(identity=i.subject, issuer=i.issuer) for i in identities])
    verifier = verifier_for(trusted_root)
    try:
        if bundle._dsse_envelope is not None:
            payload_type, payload = verifier.verify_dsse(bundle, policy)
            check_statement(payload_type, payload, digest)
        else:
            verifier.verify_artifact(_message_digest(bundle, algorithm, hex_digest, digest), bundle, policy)
    except FOREIGN_ERRORS as exc:
        raise SignatureError(f"Sigstore bundle rejected: {exc}") from exc
    signer = signer_of(bundle.signing_certificate, identities)
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


async def verify_keyless(
    registry: RegistryClient,
    image: ImageReference,
    digest: str,
    trusted_root: Path,
    identities: Sequence[KeylessIdentity],
) -> KeylessSignature:
    """Find a keyless signature on `digest` that verifies: cosign v2's legacy `.sig` layers carrying a Fulcio
    certificate first, then attached Sigstore bundles; every rejected candidate's reason is kept."""
    reasons: list[str] = []
    manifest = await signature_manifest(registry, image, digest)
    if manifest is not None:
        layers = [layer for layer in simple_signing_layers(manifest) if is_keyless_layer(layer.get("annotations"))]
        for layer in layers:
            try:
                payload = await registry.blob(image, str(layer.get("digest", "")))
                signer = check_legacy_keyless(payload, layer["annotations"], digest, trusted_root, identities)
            except RegistryError as exc:
                if exc.code == "registry_unreachable":
                    raise
                reasons.append(f"signature payload: {exc}")
                continue
            except SignatureError as exc:
                reasons.append(str(exc))
                continue
            return KeylessSignature(digest=digest, identity=signer.subject, issuer=signer.issuer)
    bundles = await attached_bundles(registry, image, digest, reasons)
    if not bundles and not reasons:
        raise NoSignatureError(f"{image.name}@{digest} has no keyless signature (no Sigstore bundle, no certificate)")
    for attached in bundles:
        try:
            return check_bundle(attached.body, digest, trusted_root, identities)
        except SignatureError as exc:
            reasons.append(str(exc))
    raise SignatureError(f"{image.name}@{digest}: no valid keyless signature: " + "; ".join(reasons))
