"""Keyed cosign signatures, read the way cosign writes them, so that `cosign sign --key` output is all we need.

Two layouts, both accepted, tried in this order:

* cosign v2 (and v3 with `--new-bundle-format=false`) stores the signatures of image `sha256:<hex>` as the
  manifest tagged `sha256-<hex>.sig` in the same repository: one layer per signature, the layer blob being a
  "simple signing" JSON payload that names the image digest, the signature over that payload base64 in the
  `dev.cosignproject.cosign/signature` annotation.
* cosign v3's default attaches a Sigstore bundle as an OCI referrer (admission/images/bundles.py): verification
  material a public-key hint (no certificate), content a DSSE envelope of an in-toto statement naming the
  image digest (or a message signature over the digest).

Checks, in order: the payload blob hashes to its layer digest (the registry fetch does this), the signature
verifies under one of the policy's keys, the payload is a cosign image signature naming *this* digest. A key is
the whole trust of a keyed policy: a Rekor entry in the bundle or annotation is not needed and not consulted
(`cosign verify --key --insecure-ignore-tlog`), since the webhook must decide offline.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from admission.errors import (
    ConfigError,
    ManifestNotFoundError,
    NoSignatureError,
    PayloadMismatchError,
    RegistryError,
    SignatureError,
)
from admission.imageref import ImageReference
from admission.images.bundles import AttachedBundle, attached_bundles, check_statement, pae, parse_bundle_json
from admission.registry import Manifest, RegistryClient, split_digest

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
MAX_SIGNATURES = 32  # per image; more is refused (never a partial read): thousands would be an attack on latency
MAX_DSSE_SIGNATURES = 8  # per envelope
MAX_TAG_LENGTH = 128  # distribution's tag grammar: a sha512 digest's `.sig` tag would not be a tag

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
        return self._verify(signature, payload, hashes.SHA256())

    def verify_prehashed(self, signature: bytes, sha256_digest: bytes) -> bool:
        """A signature over a message known only by its SHA-256 digest (a bundle's message signature)."""
        if isinstance(self.key, ed25519.Ed25519PublicKey):
            return False  # Ed25519 signs messages, never digests
        return self._verify(signature, sha256_digest, Prehashed(hashes.SHA256()))

    def _verify(self, signature: bytes, data: bytes, algorithm: hashes.SHA256 | Prehashed) -> bool:
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, data, ec.ECDSA(algorithm))
            elif isinstance(self.key, rsa.RSAPublicKey):
                try:
                    self.key.verify(signature, data, padding.PKCS1v15(), algorithm)
                except InvalidSignature:
                    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                    self.key.verify(signature, data, pss, algorithm)
            else:
                self.key.verify(signature, data)
        except (InvalidSignature, UnsupportedAlgorithm, ValueError):
            return False  # ValueError: e.g. a digest of the wrong length for the hash; not our signature
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
    check_payload(payload, digest)
    return signer


def check_payload(payload: bytes, digest: str) -> None:
    """The (verified) payload is a cosign image signature naming *this* digest."""
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


def check_keyed_bundle(body: bytes, keys: Sequence[VerificationKey], digest: str) -> str:
    """Verify one Sigstore bundle (cosign v3 `sign --key`) under the policy's keys; returns the key's name."""
    document = parse_bundle_json(body)
    envelope = document.get("dsseEnvelope")
    message = document.get("messageSignature")
    if isinstance(envelope, dict):
        payload_type, payload, signatures = _dsse(envelope)
        signed = pae(payload_type, payload)
        signer = next((k.name for k in keys for sig in signatures if k.verify(sig, signed)), None)
        if signer is None:
            raise SignatureError(f"bundle signature does not verify under any of the policy's keys ({_names(keys)})")
        check_statement(payload_type, payload, digest)
        return signer
    if isinstance(message, dict):
        algorithm, hex_digest = split_digest(digest)
        signature = _b64(message.get("signature"), "bundle message signature")
        if algorithm != "sha256":
            raise PayloadMismatchError(f"a message signature cannot sign {digest}: it is over a SHA-256 digest")
        claimed = message.get("messageDigest")
        if claimed is not None and (
            not isinstance(claimed, dict)
            or claimed.get("algorithm") != "SHA2_256"
            or _b64(claimed.get("digest"), "bundle message digest").hex() != hex_digest
        ):
            raise PayloadMismatchError(f"the bundle's message digest is not {digest}")
        signer = next((k.name for k in keys if k.verify_prehashed(signature, bytes.fromhex(hex_digest))), None)
        if signer is None:
            raise SignatureError(f"bundle signature does not verify under any of the policy's keys ({_names(keys)})")
        return signer
    raise SignatureError("Sigstore bundle is malformed: neither a DSSE envelope nor a message signature")


def _dsse(envelope: dict[str, object]) -> tuple[str, bytes, list[bytes]]:
    payload_type = envelope.get("payloadType")
    entries = envelope.get("signatures")
    if not isinstance(payload_type, str) or not isinstance(entries, list) or not entries:
        raise SignatureError("Sigstore bundle is malformed: DSSE envelope without payload type or signatures")
    if len(entries) > MAX_DSSE_SIGNATURES:
        raise SignatureError(f"DSSE envelope carries {len(entries)} signatures, over the {MAX_DSSE_SIGNATURES} limit")
    payload = _b64(envelope.get("payload"), "DSSE payload")
    signatures = [_b64(e.get("sig") if isinstance(e, dict) else None, "DSSE signature") for e in entries]
    return payload_type, payload, signatures


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(f"Sigstore bundle is malformed: {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"Sigstore bundle is malformed: {what} is not base64") from exc


async def verify_cosign(
    registry: RegistryClient, image: ImageReference, digest: str, keys: Sequence[VerificationKey]
) -> CosignSignature:
    """Find a signature on `digest` that one of `keys` made, legacy `.sig` first, then attached bundles;
    every rejected candidate's reason is kept."""
    if not keys:
        raise ConfigError("a keyed signature policy needs at least one key")
    reasons: list[str] = []
    manifest = await signature_manifest(registry, image, digest)
    if manifest is not None:
        found = await _check_legacy(registry, image, digest, keys, manifest, reasons)
        if found is not None:
            return found
    bundles = await attached_bundles(registry, image, digest, reasons)
    if manifest is None and not bundles and not reasons:
        raise NoSignatureError(f"{image.name}@{digest} has no cosign signature (no .sig manifest, no bundle)")
    for attached in bundles:
        found = _check_attached(attached, keys, digest, reasons)
        if found is not None:
            return found
    if not reasons:
        reasons.append("the .sig manifest holds no simple-signing layer")
    raise SignatureError(f"{image.name}@{digest}: no valid signature: " + "; ".join(reasons))


async def signature_manifest(registry: RegistryClient, image: ImageReference, digest: str) -> Manifest | None:
    """The `.sig` manifest cosign v2 (or v3 with `--new-bundle-format=false`) wrote for `digest`, if any."""
    tag = digest.replace(":", "-") + ".sig"
    if len(tag) > MAX_TAG_LENGTH:
        return None  # cosign cannot write it either: such an image is signed by bundles only
    try:
        return await registry.manifest(image, tag)
    except ManifestNotFoundError:
        return None


async def _check_legacy(
    registry: RegistryClient,
    image: ImageReference,
    digest: str,
    keys: Sequence[VerificationKey],
    manifest: Manifest,
    reasons: list[str],
) -> CosignSignature | None:
    layers = simple_signing_layers(manifest)
    for layer in layers:
        annotations = layer.get("annotations")
        signature_b64 = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
        if not isinstance(signature_b64, str):
            reasons.append("a layer has no signature annotation")
            continue
        try:
            payload = await registry.blob(image, str(layer.get("digest", "")))
            signer = check_simple_signing(payload, signature_b64, keys, digest)
        except RegistryError as exc:
            if exc.code == "registry_unreachable":
                raise
            reasons.append(f"signature payload: {exc}")
            continue
        except SignatureError as exc:
            reasons.append(str(exc))
            continue
        return CosignSignature(digest=digest, key=signer, docker_reference=_docker_reference(payload))
    return None


def simple_signing_layers(manifest: Manifest) -> list[Mapping[str, Any]]:
    """The signature layers of a `.sig` manifest; more than MAX_SIGNATURES is refused, not read in part."""
    layers = [layer for layer in manifest.layers if layer.get("mediaType") == SIMPLE_SIGNING_MEDIA_TYPE]
    if len(layers) > MAX_SIGNATURES:
        raise SignatureError(f"the .sig manifest holds {len(layers)} signatures, over the limit of {MAX_SIGNATURES}")
    return layers


def _check_attached(
    attached: AttachedBundle, keys: Sequence[VerificationKey], digest: str, reasons: list[str]
) -> CosignSignature | None:
    try:
        signer = check_keyed_bundle(attached.body, keys, digest)
    except SignatureError as exc:
        reasons.append(f"bundle {attached.referrer}: {exc}")
        return None
    return CosignSignature(digest=digest, key=signer, docker_reference="")


def _docker_reference(payload: bytes) -> str:
    """The payload's claimed docker-reference (informational; check_simple_signing parsed it already)."""
    identity = json.loads(payload)["critical"].get("identity")
    return str(identity.get("docker-reference", "")) if isinstance(identity, dict) else ""


def _names(keys: Sequence[VerificationKey]) -> str:
    return ", ".join(key.name for key in keys)
