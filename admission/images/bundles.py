"""What keyed and keyless Sigstore bundles share: where they are attached, and what a signed statement must say.

cosign v3 (`cosign sign`, keyed or keyless) and sigstore-python write a Sigstore bundle as an OCI referrer of the
image (artifactType `application/vnd.dev.sigstore.bundle.v0.3+json`, one bundle layer), found through the referrers
API or, on registries without it, the referrers-tag fallback index. cosign v3 signs an in-toto statement naming the
image digest in a DSSE envelope, predicate type `https://sigstore.dev/cosign/sign/v1`; a message signature over the
image digest itself is the other form. Either way the signed thing must name *this* digest in *its* algorithm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from admission.errors import PayloadMismatchError, RegistryError, SignatureError
from admission.imageref import ImageReference
from admission.registry import RegistryClient, split_digest

BUNDLE_MEDIA_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
BUNDLE_ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPES = frozenset({"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"})
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
MAX_BUNDLES = 32  # per image; more is refused (never a partial read): thousands would be an attack on our latency


@dataclass(frozen=True, slots=True)
class AttachedBundle:
    """One bundle blob as the registry served it (already hashed against its layer digest)."""

    referrer: str
    body: bytes


async def attached_bundles(
    registry: RegistryClient, image: ImageReference, digest: str, reasons: list[str]
) -> list[AttachedBundle]:
    """The bundles attached to `digest`; a referrer that holds none is noted in `reasons`, not fatal."""
    referrers = await registry.referrers(image, digest, BUNDLE_ARTIFACT_TYPE)
    if len(referrers) > MAX_BUNDLES:
        raise SignatureError(
            f"{image.name}@{digest}: {len(referrers)} bundles attached, over the limit of {MAX_BUNDLES}"
        )
    found: list[AttachedBundle] = []
    for descriptor in referrers:
        referrer = str(descriptor.get("digest", ""))
        try:
            split_digest(referrer)  # a digest, not a path: the index is the registry's word, not ours
            manifest = await registry.manifest(image, referrer)
            layers = [layer for layer in manifest.layers if layer.get("mediaType") in BUNDLE_MEDIA_TYPES]
            if not layers:
                reasons.append(f"referrer {referrer} holds no bundle layer")
                continue
            found.append(AttachedBundle(referrer, await registry.blob(image, str(layers[0].get("digest", "")))))
        except RegistryError as exc:
            if exc.code == "registry_unreachable":
                raise
            reasons.append(f"referrer {referrer}: {exc}")
    return found


def parse_bundle_json(body: bytes) -> Mapping[str, object]:
    """The bundle as a JSON object with a known media type; anything else is a malformed signature."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"Sigstore bundle is malformed: not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise SignatureError("Sigstore bundle is malformed: not a JSON object")
    if document.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        raise SignatureError(f"Sigstore bundle is malformed: media type {document.get('mediaType')!r}")
    return document


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a DSSE signature actually signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def check_statement(payload_type: str, payload: bytes, digest: str) -> None:
    """A signed in-toto statement is a cosign image signature naming `digest` (in its own algorithm)."""
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise PayloadMismatchError(f"DSSE payload type {payload_type!r} is not an in-toto statement")
    algorithm, hex_digest = split_digest(digest)
    try:
        statement = json.loads(payload)
        kind = statement["_type"]
        predicate = statement["predicateType"]
        subjects = statement["subject"]
        named = {
            str(s["digest"][algorithm]).lower()
            for s in subjects
            if isinstance(s, dict) and isinstance(s.get("digest"), dict) and algorithm in s["digest"]
        }
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise PayloadMismatchError("DSSE payload is not an in-toto statement with subjects") from exc
    if kind not in IN_TOTO_STATEMENT_TYPES:
        raise PayloadMismatchError(f"DSSE payload has statement type {kind!r}, not an in-toto statement")
    if predicate != COSIGN_SIGN_PREDICATE:
        # An attestation (SBOM, provenance...) over the image is a claim about it, not a signature of it.
        raise PayloadMismatchError(f"in-toto statement has predicate {predicate!r}, not {COSIGN_SIGN_PREDICATE!r}")
    if hex_digest not in named:
        raise PayloadMismatchError(f"in-toto statement does not name {digest} among its subjects")
