"""TPM 2.0 algorithm identifiers and attribute bits (TCG TPM 2.0 Library, Part 2), only those we accept."""

from __future__ import annotations

import hashlib
from enum import IntEnum, IntFlag

from cryptography.hazmat.primitives import hashes

from attestation.errors import UnsupportedAlgorithmError


class HashAlg(IntEnum):
    SHA1 = 0x0004
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def digest_size(self) -> int:
        return {HashAlg.SHA1: 20, HashAlg.SHA256: 32, HashAlg.SHA384: 48, HashAlg.SHA512: 64}[self]

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return {
            HashAlg.SHA1: hashes.SHA1(),  # noqa: S303 - SHA-1 PCR banks exist on real TPMs; never for signatures
            HashAlg.SHA256: hashes.SHA256(),
            HashAlg.SHA384: hashes.SHA384(),
            HashAlg.SHA512: hashes.SHA512(),
        }[self]

    def digest(self, data: bytes) -> bytes:
        # hashlib: a third of the cost of a cryptography Hash object for the many small PCR extends of a replay
        return hashlib.new(self.label, data).digest()

    @classmethod
    def from_id(cls, value: int, *, where: str) -> HashAlg:
        try:
            return cls(value)
        except ValueError as exc:
            raise UnsupportedAlgorithmError(f"{where}: hash algorithm 0x{value:04x} is not supported") from exc

    @classmethod
    def from_label(cls, label: str) -> HashAlg:
        try:
            return cls[label.upper()]
        except KeyError as exc:
            known = ", ".join(h.label for h in cls)
            raise UnsupportedAlgorithmError(f"unknown hash bank {label!r}; expected one of {known}") from exc


class TPM2_ALG(IntEnum):  # noqa: N801 - the TCG's own name
    RSA = 0x0001
    AES = 0x0006
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECC = 0x0023
    CFB = 0x0043


class ECC_CURVE(IntEnum):  # noqa: N801
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005


class TPMA_OBJECT(IntFlag):  # noqa: N801
    FIXEDTPM = 1 << 1
    STCLEAR = 1 << 2
    FIXEDPARENT = 1 << 4
    SENSITIVEDATAORIGIN = 1 << 5
    USERWITHAUTH = 1 << 6
    ADMINWITHPOLICY = 1 << 7
    NODA = 1 << 10
    ENCRYPTEDDUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18


TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
