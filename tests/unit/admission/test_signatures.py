"""Signature checks without a registry: cosign simple-signing payloads and Sigstore bundles, good and tampered."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from admission.errors import ConfigError, PayloadMismatchError, SignatureError
from admission.images.cosign import COSIGN_SIGNATURE_TYPE, VerificationKey, check_simple_signing
from admission.images.keyless import check_bundle
from admission.policy import KeylessIdentity
from tests.support.sigstore_instance import PrivateSigstore

DIGEST = "sha256:" + hashlib.sha256(b"image").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"other").hexdigest()


def payload(digest: str = DIGEST, kind: str = COSIGN_SIGNATURE_TYPE) -> bytes:
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "r/app"},
                "image": {"docker-manifest-digest": digest},
                "type": kind,
            },
            "optional": None,
        }
    ).encode()


def as_key(name: str, private: object) -> VerificationKey:
    public = private.public_key()  # type: ignore[attr-defined]
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return VerificationKey.from_pem(name, pem)


def test_ecdsa_rsa_and_ed25519_signatures_verify() -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    edkey = ed25519.Ed25519PrivateKey.generate()
    body = payload()
    signatures = {
        "ecdsa": ecdsa.sign(body, ec.ECDSA(hashes.SHA256())),
        "rsa": rsa_key.sign(body, padding.PKCS1v15(), hashes.SHA256()),
        "ed25519": edkey.sign(body),
    }
    keys = [as_key("ecdsa", ecdsa), as_key("rsa", rsa_key), as_key("ed25519", edkey)]
    for name, signature in signatures.items():
        assert check_simple_signing(body, base64.b64encode(signature).decode(), keys, DIGEST) == name


def test_tampered_payload_wrong_key_and_other_digest_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = payload()
    signature = base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
    trusted = [as_key("trusted", key)]
    with pytest.raises(SignatureError, match="does not verify"):
        check_simple_signing(body.replace(b"r/app", b"r/evil"), signature, trusted, DIGEST)
    with pytest.raises(SignatureError, match="does not verify"):
        check_simple_signing(body, signature, [as_key("other", ec.generate_private_key(ec.SECP256R1()))], DIGEST)
    with pytest.raises(PayloadMismatchError, match=f"names {DIGEST}, but the image is {OTHER}"):
        check_simple_signing(body, signature, trusted, OTHER)
    with pytest.raises(SignatureError, match="not base64"):
        check_simple_signing(body, "@@@", trusted, DIGEST)


def test_signed_but_not_a_cosign_payload_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for body, reason in ((payload(kind="something else"), "has type"), (b'{"x": 1}', "not a cosign simple-signing")):
        signature = base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
        with pytest.raises(PayloadMismatchError, match=reason):
            check_simple_signing(body, signature, [as_key("k", key)], DIGEST)


def test_non_key_pem_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a PEM public key"):
        VerificationKey.from_pem("bad", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


@pytest.fixture(scope="module")
def sigstore() -> PrivateSigstore:
    return PrivateSigstore.create()


@pytest.fixture(scope="module")
def root(sigstore: PrivateSigstore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sigstore.write_trusted_root(tmp_path_factory.mktemp("root") / "trusted_root.json")


IDENTITIES = [KeylessIdentity("https://token.edge.test", "ci@edge.test")]


@pytest.mark.parametrize("dsse", [False, True], ids=["message-signature", "dsse"])
def test_keyless_bundle_verifies_for_its_digest_only(sigstore: PrivateSigstore, root: Path, dsse: bool) -> None:
    bundle = sigstore.sign_digest(DIGEST, "ci@edge.test", "https://token.edge.test", dsse=dsse)
    signed = check_bundle(bundle, DIGEST, root, IDENTITIES)
    assert (signed.identity, signed.issuer) == ("ci@edge.test", "https://token.edge.test")
    with pytest.raises(SignatureError):
        check_bundle(bundle, OTHER, root, IDENTITIES)


@pytest.mark.parametrize(
    ("identity", "issuer"), [("evil@edge.test", "https://token.edge.test"), ("ci@edge.test", "https://other.test")]
)
def test_keyless_identity_and_issuer_must_both_match(
    sigstore: PrivateSigstore, root: Path, identity: str, issuer: str
) -> None:
    bundle = sigstore.sign_digest(DIGEST, identity, issuer)
    with pytest.raises(SignatureError, match="policies succeeded"):
        check_bundle(bundle, DIGEST, root, IDENTITIES)


def test_keyless_bundle_from_another_instance_is_refused(root: Path) -> None:
    stranger = PrivateSigstore.create()
    bundle = stranger.sign_digest(DIGEST, "ci@edge.test", "https://token.edge.test")
    with pytest.raises(SignatureError, match="Sigstore bundle rejected"):
        check_bundle(bundle, DIGEST, root, IDENTITIES)


@pytest.mark.parametrize("field", ["signature", "canonicalizedBody", "signedEntryTimestamp", "checkpoint"])
def test_tampered_keyless_bundles_are_refused(sigstore: PrivateSigstore, root: Path, field: str) -> None:
    document = json.loads(sigstore.sign_digest(DIGEST, "ci@edge.test", "https://token.edge.test"))
    entry = document["verificationMaterial"]["tlogEntries"][0]

    def flip(value: str) -> str:
        raw = bytearray(base64.b64decode(value))
        raw[-1] ^= 1
        return base64.b64encode(bytes(raw)).decode()

    if field == "signature":
        document["messageSignature"]["signature"] = flip(document["messageSignature"]["signature"])
    elif field == "canonicalizedBody":
        entry["canonicalizedBody"] = flip(entry["canonicalizedBody"])
    elif field == "signedEntryTimestamp":
        entry["inclusionPromise"]["signedEntryTimestamp"] = flip(entry["inclusionPromise"]["signedEntryTimestamp"])
    else:
        note, signature_line = entry["inclusionProof"]["checkpoint"]["envelope"].split("\n\n")
        prefix, signature = signature_line.rstrip().rsplit(" ", 1)
        entry["inclusionProof"]["checkpoint"]["envelope"] = f"{note}\n\n{prefix} {flip(signature)}\n"
    with pytest.raises(SignatureError):
        check_bundle(json.dumps(document).encode(), DIGEST, root, IDENTITIES)


@pytest.mark.parametrize(
    "garbage", [b"", b"{}", b"[1]", b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}']
)
def test_malformed_bundles_are_refused(root: Path, garbage: bytes) -> None:
    with pytest.raises(SignatureError, match="malformed"):
        check_bundle(garbage, DIGEST, root, IDENTITIES)
