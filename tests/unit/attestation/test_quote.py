from __future__ import annotations

from dataclasses import replace

import pytest

from attestation.errors import (
    AKAttributesError,
    MalformedStructureError,
    NonceMismatchError,
    PCRDigestMismatchError,
    QuoteSignatureError,
    UnsupportedAlgorithmError,
)
from attestation.quote import check_ak_scheme, verify_quote
from attestation.tpm2.attest import parse_attest
from attestation.tpm2.constants import TPM2_ALG, TPMA_OBJECT, HashAlg
from attestation.tpm2.public import parse_public
from tests.unit.attestation.evidence import CASES, quote_case


@pytest.mark.parametrize("name", CASES)
def test_recorded_quotes_verify(name: str) -> None:
    case = quote_case(name)
    ak = parse_public(case["ak_public"])
    assert ak.name == case["ak_name"], "our Name must equal the one the TPM computed"
    verified = verify_quote(
        ak=ak, attest=case["attest"], signature=case["signature"], nonce=case["nonce"], pcr_values=case["pcr_values"]
    )
    assert verified.ak_name == case["ak_name"]
    assert verified.pcrs == case["pcr_values"]
    assert {bank for bank, _ in verified.selection} == set(case["pcr_values"])


def test_both_banks_in_one_quote() -> None:
    case = quote_case("ecc-sha1-sha256")
    verified = verify_quote(
        ak=parse_public(case["ak_public"]),
        attest=case["attest"],
        signature=case["signature"],
        nonce=case["nonce"],
        pcr_values=case["pcr_values"],
    )
    assert set(verified.pcrs) == {HashAlg.SHA1, HashAlg.SHA256}
    assert len(verified.pcrs[HashAlg.SHA1][4]) == 20


@pytest.mark.parametrize("name", CASES)
def test_each_check_fails_on_its_own_tampering(name: str) -> None:
    case = quote_case(name)
    ak = parse_public(case["ak_public"])
    args = {"ak": ak, "attest": case["attest"], "signature": case["signature"], "nonce": case["nonce"]}
    good = case["pcr_values"]

    flipped = bytearray(case["attest"])
    flipped[-1] ^= 1
    with pytest.raises(QuoteSignatureError):
        verify_quote(**{**args, "attest": bytes(flipped)}, pcr_values=good)
    with pytest.raises(NonceMismatchError):
        verify_quote(**{**args, "nonce": b"\x01" * 32}, pcr_values=good)
    bank = next(iter(good))
    index = next(iter(good[bank]))
    altered = {b: dict(v) for b, v in good.items()}
    altered[bank][index] = b"\x42" * bank.digest_size
    with pytest.raises(PCRDigestMismatchError, match="altered"):
        verify_quote(**args, pcr_values=altered)
    missing = {b: dict(v) for b, v in good.items()}
    del missing[bank][index]
    with pytest.raises(PCRDigestMismatchError, match=f"PCR {index}"):
        verify_quote(**args, pcr_values=missing)
    short = {b: dict(v) for b, v in good.items()}
    short[bank][index] = b"\x00"
    with pytest.raises(PCRDigestMismatchError, match="expected"):
        verify_quote(**args, pcr_values=short)


def test_signature_from_another_ak() -> None:
    ecc, rsa = quote_case("ecc-sha256"), quote_case("rsa-sha256")
    with pytest.raises(QuoteSignatureError):
        verify_quote(
            ak=parse_public(rsa["ak_public"]),
            attest=ecc["attest"],
            signature=ecc["signature"],
            nonce=ecc["nonce"],
            pcr_values=ecc["pcr_values"],
        )


def test_ak_without_restricted_attribute_is_refused() -> None:
    case = quote_case("ecc-sha256")
    raw = bytearray(case["ak_public"])
    attrs = int.from_bytes(raw[4:8], "big") & ~TPMA_OBJECT.RESTRICTED
    raw[4:8] = attrs.to_bytes(4, "big")
    with pytest.raises(AKAttributesError, match="restricted"):
        verify_quote(
            ak=parse_public(bytes(raw)),
            attest=case["attest"],
            signature=case["signature"],
            nonce=case["nonce"],
            pcr_values=case["pcr_values"],
        )


def test_attest_parses_and_rejects_trailing_bytes() -> None:
    case = quote_case("ecc-sha256")
    info = parse_attest(case["attest"])
    assert info.extra_data == case["nonce"]
    assert info.selection == ((HashAlg.SHA256, (0, 1, 2, 3, 4, 5, 6, 7, 10, 16)),)
    with pytest.raises(MalformedStructureError, match="trailing"):
        parse_attest(case["attest"] + b"\x00")
    with pytest.raises(MalformedStructureError, match="truncated"):
        parse_attest(case["attest"][:-3])


def test_recorded_signature_schemes_are_the_three_we_claim() -> None:
    from attestation.tpm2.constants import TPM2_ALG
    from attestation.tpm2.signature import parse_signature

    schemes = {name: parse_signature(quote_case(name)["signature"]).scheme for name in CASES}
    assert schemes["ecc-sha256"] == TPM2_ALG.ECDSA
    assert schemes["rsa-sha256"] == TPM2_ALG.RSASSA
    assert schemes["rsapss-sha256"] == TPM2_ALG.RSAPSS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name_alg": HashAlg.SHA1}, "nameAlg is SHA-1"),
        ({"scheme": TPM2_ALG.NULL, "scheme_hash": None}, "signing scheme is NULL"),
        ({"scheme": TPM2_ALG.RSASSA}, "must fix its scheme to one of ECDSA"),  # an RSA scheme on an ECC key
        ({"scheme_hash": HashAlg.SHA1}, "ECDSA/SHA-1: quotes signed with SHA-1 are refused"),
    ],
)
def test_weak_or_unfixed_ak_schemes_are_refused_naming_them(change: dict[str, object], message: str) -> None:
    case = quote_case("ecc-sha1-sha256")
    ak = replace(parse_public(case["ak_public"]), **change)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedAlgorithmError, match=message):
        check_ak_scheme(ak)


def test_sha1_is_allowed_only_by_the_opt_in_and_the_signature_must_be_in_the_aks_scheme() -> None:
    case = quote_case("ecc-sha1-sha256")
    ak = parse_public(case["ak_public"])
    check_ak_scheme(replace(ak, scheme_hash=HashAlg.SHA1), allow_sha1=True)
    # a SHA-384 AK cannot be credited with this quote, which is signed ECDSA/SHA-256
    with pytest.raises(QuoteSignatureError, match="not the AK's"):
        verify_quote(
            ak=replace(ak, scheme_hash=HashAlg.SHA384),
            attest=case["attest"],
            signature=case["signature"],
            nonce=case["nonce"],
            pcr_values=case["pcr_values"],
        )
