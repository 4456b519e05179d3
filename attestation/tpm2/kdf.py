"""The TPM's key derivation functions (TPM 2.0 Part 1, §11.4.10): KDFa (SP800-108 HMAC counter) and KDFe
(SP800-56A concatenation), needed to build credentials the TPM will accept."""

from __future__ import annotations

import hmac
import struct

from attestation.tpm2.constants import HashAlg


def kdfa(hash_alg: HashAlg, key: bytes, label: str, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    out = b""
    counter = 0
    label_bytes = label.encode() + b"\x00"
    name = hash_alg.label
    while len(out) * 8 < bits:
        counter += 1
        out += hmac.new(
            key, struct.pack(">I", counter) + label_bytes + context_u + context_v + struct.pack(">I", bits), name
        ).digest()
    return out[: (bits + 7) // 8]


def kdfe(hash_alg: HashAlg, z: bytes, label: str, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    out = b""
    counter = 0
    label_bytes = label.encode() + b"\x00"
    while len(out) * 8 < bits:
        counter += 1
        out += hash_alg.digest(struct.pack(">I", counter) + z + label_bytes + party_u + party_v)
    return out[: (bits + 7) // 8]
