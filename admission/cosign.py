"""Keyed cosign signatures, read the way cosign writes them, so that `cosign sign --key` output is all we need.

cosign stores the signatures of image `sha256:<hex>` as the manifest tagged `sha256-<hex>.sig` in the same
repository: one layer per signature, the layer blob being a "simple signing" JSON payload that names the image
digest, the signature over that payload base64 in the `dev.cosignproject.cosign/signature` annotation.
Checks, in order: the payload blob hashes to its layer digest (the registry fetch does this), the signature
verifies under one of the policy's keys, the payload is a cosign image signature naming *this* digest.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from admission.errors import (
    BlobMismatchError,
    ConfigError,
    ManifestNotFoundError,
    NoSignatureError,
    PayloadMismatchError,
    SignatureError,
)
from admission.imageref import ImageReference
from admission.registry import RegistryClient

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
MAX_SIGNATURES = 32  # per image; a .sig manifest with thousands of layers is an attack on our latency

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class VerificationKey:
    name: str
    key: PublicKey

    @classmethod
    def from_pem(cls, name: str, pem: bytes) -> VerificationKey:
        try:
            key = load_pem_public_key(pem)
        except ValueError as exc:
            raise ConfigError(f"key {name!r} is not a PEM public key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise ConfigError(f"key {name!r}: {type(key).__name__} keys are not supported by cosign")
        return cls(name=name, key=key)

    def verify(self, signature: bytes, payload: bytes) -> bool:
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(self.key, rsa.RSAPublicKey):
                try:
                    self.key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
                except InvalidSignature:
                    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                    self.key.verify(signature, payload, pss, hashes.SHA256())
            else:
                self.key.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class CosignSignature:
    """A signature that verified under `key` over a payload naming `digest`."""

    digest: str
    key: str
    docker_reference: str


def check_simple_signing(payload: bytes, signature_b64: str, keys: Sequence[VerificationKey], digest: str) -> str:
    """Verify one payload/signature pair; returns the name of the key that verified it."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("cosign signature annotation is not base64") from exc
    signer = next((key.name for key in keys if key.verify(signature, payload)), None)
    if signer is None:
        raise SignatureError(f"signature does not verify under any of the policy's keys ({_names(keys)})")
    try:
        document = json.loads(payload)
        critical = document["critical"]
        claimed = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadMismatchError("signed payload is not a cosign simple-signing document") from exc
    if kind != COSIGN_SIGNATURE_TYPE:
        raise PayloadMismatchError(f"signed payload has type {kind!r}, expected {COSIGN_SIGNATURE_TYPE!r}")
    if claimed != digest:
        raise PayloadMismatchError(f"signed payload names {claimed}, but the image is {digest}")
    return signer


async def verify_cosign(
    registry: RegistryClient, image: ImageReference, digest: str, keys: Sequence[VerificationKey]
) -> CosignSignature:
    """Find a signature on `digest` that one of `keys` made; every rejected candidate's reason is kept."""
    if not keys:
        raise ConfigError("a keyed signature policy needs at least one key")
    try:
        manifest = await registry.manifest(image, digest.replace(":", "-") + ".sig")
    except ManifestNotFoundError as exc:
        raise NoSignatureError(f"{image.name}@{digest} has no cosign signature") from exc
    layers = [layer for layer in manifest.layers if layer.get("mediaType") == SIMPLE_SIGNING_MEDIA_TYPE]
    if not layers:
        raise NoSignatureError(f"{image.name}@{digest}: the .sig manifest holds no simple-signing layer")
    reasons: list[str] = []
    for layer in layers[:MAX_SIGNATURES]:
        annotations = layer.get("annotations")
        signature_b64 = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        if not isinstance(signature_b64, str):
            reasons.append("a layer has no signature annotation")
            continue
        try:
            payload = await registry.blob(image, str(layer.get("digest", "")))
            signer = check_simple_signing(payload, signature_b64, keys, digest)
        except ManifestNotFoundError as exc:
            reasons.append(f"signature payload missing: {exc}")
            continue
        except (SignatureError, BlobMismatchError) as exc:
            reasons.append(str(exc))
            continue
        identity = json.loads(payload)["critical"].get("identity")
        reference = identity.get("docker-reference", "") if isinstance(identity, dict) else ""
        return CosignSignature(digest=digest, key=signer, docker_reference=str(reference))
    raise SignatureError(f"{image.name}@{digest}: no valid signature: " + "; ".join(reasons))


def _names(keys: Sequence[VerificationKey]) -> str:
    return ", ".join(key.name for key in keys)
