"""cosign v2's keyless signatures in the legacy `.sig` layout, verified offline the way `cosign verify` does.

Signing keylessly, cosign v2 (and v3 with `--new-bundle-format=false`) writes one `.sig` layer per signature:
the simple-signing payload (the blob), its signature (`dev.cosignproject.cosign/signature`), the Fulcio leaf
(`dev.sigstore.cosign/certificate`, PEM) and Rekor's answer (`dev.sigstore.cosign/bundle`: the entry body and
its signed entry timestamp, no inclusion proof). sigstore-python will not take that as a bundle (it requires an
inclusion proof), so the checks it makes on a bundle are made here, in its order, against the same trust root:

1. Rekor's signed entry timestamp verifies under a transparency-log key of the trust root: the integrated
   time is now a trusted time of signing (without it a short-lived certificate proves nothing, so no
   Rekor answer means no verdict);
2. the entry is a hashedrekord binding sha256(payload), this signature and this certificate;
3. the certificate chains to a Fulcio CA of the trust root at that time, for code signing;
4. its embedded SCT verifies under a CT-log key of the trust root;
5. its subject and issuer are one of the policy's identities;
6. the signature verifies over the payload under the certificate's key;
7. the payload is a cosign image signature naming this digest.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

# sigstore-python's own SCT and keyring checks: the same code that verifies bundles, not a second copy of it.
from sigstore._internal.sct import verify_sct
from sigstore._internal.trust import KeyringPurpose
from sigstore._utils import KeyID

from admission.errors import SignatureError
from admission.images.cosign import SIGNATURE_ANNOTATION, check_payload
from admission.images.sigstore_trust import FOREIGN_ERRORS, signer_of, trusted_root_for
from admission.policy import KeylessIdentity

CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
REKOR_BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"


def is_keyless_layer(annotations: object) -> bool:
    return isinstance(annotations, Mapping) and isinstance(annotations.get(CERTIFICATE_ANNOTATION), str)


def check_legacy_keyless(
    payload: bytes,
    annotations: Mapping[str, object],
    digest: str,
    trusted_root: Path,
    identities: Sequence[KeylessIdentity],
) -> KeylessIdentity:
    """Verify one keyless `.sig` layer; returns the policy identity that signed. Foreign errors are refusals."""
    try:
        return _check(payload, annotations, digest, trusted_root, identities)
    except FOREIGN_ERRORS as exc:
        raise SignatureError(f"keyless .sig signature rejected: {type(exc).__name__}: {exc}") from exc


def _check(
    payload: bytes,
    annotations: Mapping[str, object],
    digest: str,
    trusted_root: Path,
    identities: Sequence[KeylessIdentity],
) -> KeylessIdentity:
    certificate = x509.load_pem_x509_certificate(_text(annotations, CERTIFICATE_ANNOTATION).encode())
    signature_b64 = _text(annotations, SIGNATURE_ANNOTATION)
    signature = base64.b64decode(signature_b64, validate=True)
    if REKOR_BUNDLE_ANNOTATION not in annotations:
        raise SignatureError("keyless .sig signature has no Rekor entry: no trusted time of signing")
    rekor = json.loads(_text(annotations, REKOR_BUNDLE_ANNOTATION))
    root = trusted_root_for(trusted_root)

    # 1. The signed entry timestamp, over the canonical JSON of exactly what Rekor promised.
    promise = rekor["Payload"]
    body_b64, integrated, log_index, log_id = (
        promise["body"],
        promise["integratedTime"],
        promise["logIndex"],
        promise["logID"],
    )
    if not (isinstance(body_b64, str) and _is_int(integrated) and _is_int(log_index) and isinstance(log_id, str)):
        raise SignatureError("keyless .sig signature: the Rekor entry is malformed")
    canonical = rfc8785.dumps({"body": body_b64, "integratedTime": integrated, "logID": log_id, "logIndex": log_index})
    entry_timestamp = base64.b64decode(rekor["SignedEntryTimestamp"], validate=True)
    root.rekor_keyring(KeyringPurpose.VERIFY).verify(
        key_id=KeyID(bytes.fromhex(log_id)), signature=entry_timestamp, data=canonical
    )

    # 2. The entry binds this payload, this signature and this certificate.
    body = json.loads(base64.b64decode(body_b64, validate=True))
    if body["kind"] != "hashedrekord":
        raise SignatureError(f"keyless .sig signature: Rekor entry kind {body['kind']!r} is not hashedrekord")
    spec = body["spec"]
    hashed = spec["data"]["hash"]
    if hashed["algorithm"] != "sha256" or hashed["value"] != hashlib.sha256(payload).hexdigest():
        raise SignatureError("keyless .sig signature: the Rekor entry is for another payload")
    if base64.b64decode(spec["signature"]["content"], validate=True) != signature:
        raise SignatureError("keyless .sig signature: the Rekor entry is for another signature")
    logged = x509.load_pem_x509_certificate(base64.b64decode(spec["signature"]["publicKey"]["content"]))
    if logged != certificate:
        raise SignatureError("keyless .sig signature: the Rekor entry is for another certificate")

    # 3. The chain at the time of signing, Fulcio's code-signing profile.
    when = datetime.datetime.fromtimestamp(integrated, datetime.UTC)
    verifier = (
        PolicyBuilder()
        .store(Store(root.get_fulcio_certs()))
        .time(when)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca().may_be_present(
                x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
            ),
            ee_policy=ExtensionPolicy.webpki_defaults_ee().may_be_present(
                x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
            ),
        )
        .build_client_verifier()
    )
    chain = verifier.verify(certificate, []).chain[1:]
    if not certificate.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
        raise SignatureError("keyless .sig signature: the certificate is not for digital signatures")
    if (
        ExtendedKeyUsageOID.CODE_SIGNING
        not in certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ):
        raise SignatureError("keyless .sig signature: the certificate is not for code signing")

    # 4. and 5. The certificate was logged in CT, and names one of the policy's identities.
    verify_sct(certificate, chain, root.ct_keyring(KeyringPurpose.VERIFY))
    signer = signer_of(certificate, identities)

    # 6. and 7. The signature is the certificate key's, over a payload naming this digest.
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"keyless .sig signature: {type(key).__name__} certificates are not Fulcio's")
    key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    check_payload(payload, digest)
    return signer


def _text(annotations: Mapping[str, object], name: str) -> str:
    value = annotations.get(name)
    if not isinstance(value, str):
        raise SignatureError(f"keyless .sig signature: annotation {name} is missing")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
