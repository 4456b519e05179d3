"""TPMT_SIGNATURE: ECDSA, RSASSA-PKCS1v15 and RSAPSS, verified with `cryptography`.

SHA-1 signatures are refused: a quote is only as strong as the hash it signs. The one exception is the
caller's explicit `allow_sha1` (a device class's `allow_sha1_quotes`, for legacy vTPMs).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.errors import QuoteSignatureError, UnsupportedAlgorithmError
from attestation.tpm2.constants import TPM2_ALG, HashAlg
from attestation.tpm2.marshal import Reader


@dataclass(frozen=True, slots=True)
class TpmSignature:
    scheme: int
    hash: HashAlg
    #: DER for ECDSA, the raw signature for RSA
    signature: bytes


def parse_signature(data: bytes) -> TpmSignature:
    r = Reader(data, "TPMT_SIGNATURE")
    scheme = r.u16()
    if scheme not in (TPM2_ALG.ECDSA, TPM2_ALG.RSASSA, TPM2_ALG.RSAPSS):
        raise UnsupportedAlgorithmError(f"TPMT_SIGNATURE: scheme 0x{scheme:04x} is not ECDSA, RSASSA or RSAPSS")
    hash_alg = HashAlg.from_id(r.u16(), where="TPMT_SIGNATURE")
    if scheme == TPM2_ALG.ECDSA:
        sig_r, sig_s = r.tpm2b(max_size=66), r.tpm2b(max_size=66)
        signature = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
    else:
        signature = r.tpm2b(max_size=512)
    r.expect_end()
    return TpmSignature(scheme=scheme, hash=hash_alg, signature=signature)


def verify_signature(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, sig: TpmSignature, message: bytes, *, allow_sha1: bool = False
) -> None:
    if sig.hash == HashAlg.SHA1 and not allow_sha1:
        raise UnsupportedAlgorithmError("the quote is signed with SHA-1; configure the AK with SHA-256 or stronger")
    algorithm = sig.hash.hash_algorithm()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if sig.scheme != TPM2_ALG.ECDSA:
                raise QuoteSignatureError("an RSA signature scheme was used with an ECC key")
            key.verify(sig.signature, message, ec.ECDSA(algorithm))
        else:
            if sig.scheme == TPM2_ALG.ECDSA:
                raise QuoteSignatureError("an ECDSA signature was used with an RSA key")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if sig.scheme == TPM2_ALG.RSASSA
                else padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)
            )
            key.verify(sig.signature, message, pad, algorithm)
    except InvalidSignature as exc:
        raise QuoteSignatureError(
            "the quote's signature does not verify with the AK: the quote was altered or signed by another key"
        ) from exc
