"""TPMT_PUBLIC: a TPM object's public area, turned into a `cryptography` key plus what the TPM says about it.

The Name (nameAlg || H(TPMT_PUBLIC)) is computed from the exact bytes received, which is what binds an AK
to a credential (MakeCredential) and to the quotes it signs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation.errors import MalformedStructureError, UnsupportedAlgorithmError
from attestation.tpm2.constants import ECC_CURVE, TPM2_ALG, HashAlg
from attestation.tpm2.marshal import Reader, u16

_CURVES: dict[int, ec.EllipticCurve] = {
    ECC_CURVE.NIST_P256: ec.SECP256R1(),
    ECC_CURVE.NIST_P384: ec.SECP384R1(),
    ECC_CURVE.NIST_P521: ec.SECP521R1(),
}
#: RSA keys below this size are refused as evidence keys
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class TpmPublic:
    raw: bytes
    type: int
    name_alg: HashAlg
    attributes: int
    auth_policy: bytes
    symmetric: tuple[int, int, int] | None
    scheme: int
    scheme_hash: int | None
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    curve: int | None

    @property
    def name(self) -> bytes:
        return u16(self.name_alg) + self.name_alg.digest(self.raw)

    def has_attributes(self, mask: int) -> bool:
        return self.attributes & mask == mask

    def ecc_point(self) -> tuple[bytes, bytes]:
        if not isinstance(self.key, ec.EllipticCurvePublicKey):
            raise UnsupportedAlgorithmError("not an ECC key")
        size = (self.key.curve.key_size + 7) // 8
        numbers = self.key.public_numbers()
        return numbers.x.to_bytes(size, "big"), numbers.y.to_bytes(size, "big")


def parse_public(data: bytes) -> TpmPublic:
    r = Reader(data, "TPMT_PUBLIC")
    key_type = r.u16()
    name_alg = HashAlg.from_id(r.u16(), where="TPMT_PUBLIC nameAlg")
    attributes = r.u32()
    auth_policy = r.tpm2b(max_size=64)
    symmetric: tuple[int, int, int] | None = None
    sym_alg = r.u16()
    if sym_alg != TPM2_ALG.NULL:
        symmetric = (sym_alg, r.u16(), r.u16())
    scheme = r.u16()
    scheme_hash = None if scheme == TPM2_ALG.NULL else r.u16()
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    curve: int | None = None
    try:
        if key_type == TPM2_ALG.RSA:
            bits = r.u16()
            exponent = r.u32() or 65537
            modulus = r.tpm2b(max_size=512)
            if bits < MIN_RSA_BITS or len(modulus) * 8 != bits:
                raise UnsupportedAlgorithmError(f"RSA key of {bits} bits (modulus {len(modulus)} bytes) refused")
            key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
        elif key_type == TPM2_ALG.ECC:
            curve = r.u16()
            kdf = r.u16()
            if kdf != TPM2_ALG.NULL:
                r.u16()
            x, y = r.tpm2b(max_size=66), r.tpm2b(max_size=66)
            if curve not in _CURVES:
                raise UnsupportedAlgorithmError(f"ECC curve 0x{curve:04x} is not supported")
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), _CURVES[curve]
            ).public_key()
        else:
            raise UnsupportedAlgorithmError(f"TPMT_PUBLIC: key type 0x{key_type:04x} is neither RSA nor ECC")
    except ValueError as exc:
        raise MalformedStructureError(f"TPMT_PUBLIC: invalid public key: {exc}") from exc
    r.expect_end()
    return TpmPublic(
        raw=bytes(data),
        type=key_type,
        name_alg=name_alg,
        attributes=attributes,
        auth_policy=auth_policy,
        symmetric=symmetric,
        scheme=scheme,
        scheme_hash=scheme_hash,
        key=key,
        curve=curve,
    )


def parse_public_2b(data: bytes) -> TpmPublic:
    r = Reader(data, "TPM2B_PUBLIC")
    inner = r.tpm2b()
    r.expect_end()
    return parse_public(inner)
