"""TPM2_MakeCredential in software, on the hub (TPM 2.0 Part 1, §24 "Credential Protection").

The secret is sealed to the EK for one object Name (the AK's): only ActivateCredential in the TPM that holds
the EK's private key *and* an object with that Name can recover it. That is how the hub learns the AK lives
in the same TPM as the certified EK.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # the TPM mandates AES-CFB; cryptography moved CFB to `decrepit` in 44+
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from attestation.errors import UnsupportedAlgorithmError
from attestation.tpm2.constants import TPM2_ALG
from attestation.tpm2.kdf import kdfa, kdfe
from attestation.tpm2.marshal import tpm2b
from attestation.tpm2.public import TpmPublic


@dataclass(frozen=True, slots=True)
class Credential:
    blob: bytes  # marshalled TPM2B_ID_OBJECT, size prefix included
    encrypted_secret: bytes  # marshalled TPM2B_ENCRYPTED_SECRET, size prefix included


def make_credential(ek: TpmPublic, secret: bytes, object_name: bytes) -> Credential:
    name_alg = ek.name_alg
    if len(secret) > name_alg.digest_size:
        raise UnsupportedAlgorithmError(f"a credential holds at most {name_alg.digest_size} bytes for this EK")
    if ek.symmetric is None or ek.symmetric[0] != TPM2_ALG.AES or ek.symmetric[2] != TPM2_ALG.CFB:
        raise UnsupportedAlgorithmError("the EK is not a storage key with AES-CFB: it cannot receive credentials")
    sym_bits = ek.symmetric[1]
    digest_bits = name_alg.digest_size * 8

    if isinstance(ek.key, rsa.RSAPublicKey):
        seed = os.urandom(name_alg.digest_size)
        algorithm = name_alg.hash_algorithm()
        encrypted = ek.key.encrypt(
            seed, padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=b"IDENTITY\x00")
        )
    elif isinstance(ek.key, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(ek.key.curve)
        z = ephemeral.exchange(ec.ECDH(), ek.key)
        size = (ek.key.curve.key_size + 7) // 8
        numbers = ephemeral.public_key().public_numbers()
        eph_x, eph_y = numbers.x.to_bytes(size, "big"), numbers.y.to_bytes(size, "big")
        ek_x, _ = ek.ecc_point()
        seed = kdfe(name_alg, z, "IDENTITY", eph_x, ek_x, digest_bits)
        encrypted = tpm2b(eph_x) + tpm2b(eph_y)
    else:  # pragma: no cover - parse_public only yields RSA or ECC
        raise UnsupportedAlgorithmError("EK key type not supported")

    sym_key = kdfa(name_alg, seed, "STORAGE", object_name, b"", sym_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\x00" * 16)).encryptor()
    enc_identity = encryptor.update(tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(name_alg, seed, "INTEGRITY", b"", b"", digest_bits)
    outer_hmac = hmac.new(hmac_key, enc_identity + object_name, name_alg.label).digest()
    return Credential(blob=tpm2b(tpm2b(outer_hmac) + enc_identity), encrypted_secret=tpm2b(encrypted))


__all__ = ["Credential", "make_credential"]
