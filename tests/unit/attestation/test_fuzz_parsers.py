"""Garbage, truncated and mutated real structures never raise anything but our own errors."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import AttestationError
from attestation.eventlog import parse_event_log
from attestation.quote import verify_quote
from attestation.tpm2.attest import parse_attest
from attestation.tpm2.public import parse_public
from attestation.tpm2.signature import parse_signature
from tests.unit.attestation.evidence import quote_case, recorded

CASE = quote_case("ecc-sha256")
LOG = bytes.fromhex(recorded()["event_log"])
FUZZ = settings(max_examples=300, deadline=None)


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    truncated = st.integers(0, len(seed)).map(lambda n: seed[:n])
    flipped = st.tuples(st.integers(0, len(seed) - 1), st.integers(1, 255)).map(
        lambda p: seed[: p[0]] + bytes([seed[p[0]] ^ p[1]]) + seed[p[0] + 1 :]
    )
    return st.one_of(st.binary(max_size=600), truncated, flipped)


def _only_ours(parse: object, data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse(data)  # type: ignore[operator]


@FUZZ
@given(_mutations(CASE["ak_public"]))
def test_public(data: bytes) -> None:
    _only_ours(parse_public, data)


@FUZZ
@given(_mutations(CASE["attest"]))
def test_attest(data: bytes) -> None:
    _only_ours(parse_attest, data)


@FUZZ
@given(_mutations(CASE["signature"]))
def test_signature(data: bytes) -> None:
    _only_ours(parse_signature, data)


@FUZZ
@given(_mutations(LOG))
def test_event_log(data: bytes) -> None:
    _only_ours(parse_event_log, data)


@FUZZ
@given(attest=_mutations(CASE["attest"]), signature=_mutations(CASE["signature"]))
def test_verify_quote(attest: bytes, signature: bytes) -> None:
    ak = parse_public(CASE["ak_public"])
    with contextlib.suppress(AttestationError):
        verify_quote(ak=ak, attest=attest, signature=signature, nonce=CASE["nonce"], pcr_values=CASE["pcr_values"])


REAL_LOG = (Path(__file__).resolve().parents[2] / "data" / "eventlogs" / "event-sd-boot-fedora37.bin").read_bytes()


@FUZZ
@given(_mutations(REAL_LOG))
def test_real_event_log(data: bytes) -> None:
    _only_ours(parse_event_log, data)
