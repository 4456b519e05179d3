"""Verify a TPM quote: the recipe the hub runs on every enrollment.

Steps, in order, each with its own error:
1. the AK is a restricted, fixedTPM, fixedParent signing key (else a quote proves nothing), named with SHA-256
   or stronger, whose fixed signing scheme hashes with SHA-256 or stronger (SHA-1 only where the device class
   opts in with `allow_sha1_quotes`, for legacy vTPMs);
2. the signature over TPMS_ATTEST is in the AK's scheme and verifies with the AK;
3. TPMS_ATTEST is TPM-generated (magic) and a quote;
4. its extraData is our nonce (no replay, no stale quote);
5. the PCR values sent, concatenated in selection order and hashed with the signature's hash, equal the
   signed pcrDigest; only then are those values trusted, and returned as `VerifiedQuote.pcrs`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from attestation.errors import (
    AKAttributesError,
    MalformedStructureError,
    NonceMismatchError,
    PCRDigestMismatchError,
    QuoteSignatureError,
    UnsupportedAlgorithmError,
)
from attestation.tpm2.attest import Selection, parse_attest
from attestation.tpm2.constants import TPM2_ALG, TPM_GENERATED_VALUE, TPMA_OBJECT, HashAlg
from attestation.tpm2.public import TpmPublic
from attestation.tpm2.signature import parse_signature, verify_signature

PcrValues = Mapping[HashAlg, Mapping[int, bytes]]

#: the signing schemes a quote may use, per key type
_AK_SCHEMES: dict[int, tuple[TPM2_ALG, ...]] = {
    TPM2_ALG.RSA: (TPM2_ALG.RSASSA, TPM2_ALG.RSAPSS),
    TPM2_ALG.ECC: (TPM2_ALG.ECDSA,),
}
_SCHEME_NAMES: dict[int, str] = {
    TPM2_ALG.RSASSA: "RSASSA",
    TPM2_ALG.RSAPSS: "RSAPSS",
    TPM2_ALG.ECDSA: "ECDSA",
    TPM2_ALG.NULL: "NULL",
}
_AK_REQUIRED = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT


@dataclass(frozen=True, slots=True)
class VerifiedQuote:
    ak_name: bytes
    nonce: bytes
    #: exactly the quoted PCRs, with values proven by the signature
    pcrs: Mapping[HashAlg, Mapping[int, bytes]]
    clock: int
    reset_count: int
    restart_count: int
    firmware_version: int
    selection: Selection


def check_ak_attributes(ak: TpmPublic) -> None:
    if not ak.has_attributes(_AK_REQUIRED | TPMA_OBJECT.SENSITIVEDATAORIGIN) or ak.has_attributes(TPMA_OBJECT.DECRYPT):
        raise AKAttributesError(
            f"the AK has attributes 0x{ak.attributes:08x}; it must be a restricted, fixedTPM, fixedParent, "
            "sensitiveDataOrigin signing key (not decrypt), created inside the TPM"
        )


def scheme_label(ak: TpmPublic) -> str:
    """The AK's signing scheme as people write it, e.g. 'RSASSA/SHA-256'."""
    scheme = _SCHEME_NAMES.get(ak.scheme, f"0x{ak.scheme:04x}")
    if ak.scheme_hash is None:
        return scheme
    try:
        digest = HashAlg(ak.scheme_hash).label.upper().replace("SHA", "SHA-")
    except ValueError:
        digest = f"hash 0x{ak.scheme_hash:04x}"
    return f"{scheme}/{digest}"


def ak_signs_with_sha1(ak: TpmPublic) -> bool:
    return ak.scheme_hash == HashAlg.SHA1


def check_ak_scheme(ak: TpmPublic, *, allow_sha1: bool = False) -> None:
    """Refuse, before any quote is spent, an AK whose quotes could not be trusted.

    A restricted signing key signs with the scheme fixed in its public area, so the scheme is known at
    enrollment: an AK signing with SHA-1 is refused there, naming the scheme, unless its device class opts
    in (legacy vTPMs whose quotes are SHA-1 signed). The AK's Name, which MakeCredential binds the secret
    to, must be SHA-256 or stronger, whatever the class: a SHA-1 Name is open to collisions.
    """
    if ak.name_alg == HashAlg.SHA1:
        raise UnsupportedAlgorithmError(
            "the AK's nameAlg is SHA-1: its Name binds the credential and the quotes, and must be SHA-256 or stronger"
        )
    allowed = _AK_SCHEMES.get(ak.type, ())
    if ak.scheme not in allowed or ak.scheme_hash is None:
        raise UnsupportedAlgorithmError(
            f"the AK's signing scheme is {scheme_label(ak)}: an AK must fix its scheme to one of "
            f"{', '.join(_SCHEME_NAMES[s] for s in allowed)} with SHA-256 or stronger"
        )
    try:
        digest = HashAlg.from_id(ak.scheme_hash, where="the AK's signing scheme")
    except (MalformedStructureError, UnsupportedAlgorithmError) as exc:
        raise UnsupportedAlgorithmError(f"the AK's signing scheme is {scheme_label(ak)}: {exc}") from exc
    if digest == HashAlg.SHA1 and not allow_sha1:
        raise UnsupportedAlgorithmError(
            f"the AK's signing scheme is {scheme_label(ak)}: quotes signed with SHA-1 are refused; create the AK "
            "with SHA-256 (e.g. rsa2048:rsassa-sha256), or, for a legacy vTPM that only signs SHA-1 quotes, "
            "set allow_sha1_quotes: true on its device class"
        )


def verify_quote(
    *,
    ak: TpmPublic,
    attest: bytes,
    signature: bytes,
    nonce: bytes,
    pcr_values: PcrValues,
    allow_sha1: bool = False,
) -> VerifiedQuote:
    check_ak_attributes(ak)
    check_ak_scheme(ak, allow_sha1=allow_sha1)
    sig = parse_signature(signature)
    if sig.scheme != ak.scheme or sig.hash != ak.scheme_hash:
        raise QuoteSignatureError(
            f"the quote's signature scheme is not the AK's ({scheme_label(ak)}): a restricted key signs only "
            "with its own scheme, so this signature is not the TPM's"
        )
    verify_signature(ak.key, sig, attest, allow_sha1=allow_sha1)
    info = parse_attest(attest)
    if info.magic != TPM_GENERATED_VALUE:
        raise MalformedStructureError("the attestation was not generated by a TPM (magic is not TPM_GENERATED)")
    if not hmac.compare_digest(info.extra_data, nonce):
        raise NonceMismatchError(
            "the quote does not carry the nonce of this challenge: it is a replayed or stale quote"
        )
    if not info.selection or not any(pcrs for _, pcrs in info.selection):
        raise PCRDigestMismatchError("the quote selects no PCR")
    concatenated = bytearray()
    proven: dict[HashAlg, dict[int, bytes]] = {}
    for bank, pcrs in info.selection:
        sent = pcr_values.get(bank, {})
        for index in pcrs:
            value = sent.get(index)
            if value is None:
                raise PCRDigestMismatchError(
                    f"the quote covers PCR {index} ({bank.label}) but no value was sent for it"
                )
            if len(value) != bank.digest_size:
                raise PCRDigestMismatchError(
                    f"PCR {index} ({bank.label}) value has {len(value)} bytes, expected {bank.digest_size}"
                )
            concatenated += value
            proven.setdefault(bank, {})[index] = value
    if not hmac.compare_digest(sig.hash.digest(bytes(concatenated)), info.pcr_digest):
        raise PCRDigestMismatchError(
            "the PCR values sent do not hash to the digest the TPM signed: they were altered after the quote"
        )
    return VerifiedQuote(
        ak_name=ak.name,
        nonce=nonce,
        pcrs=MappingProxyType({b: MappingProxyType(v) for b, v in proven.items()}),
        clock=info.clock,
        reset_count=info.reset_count,
        restart_count=info.restart_count,
        firmware_version=info.firmware_version,
        selection=info.selection,
    )
