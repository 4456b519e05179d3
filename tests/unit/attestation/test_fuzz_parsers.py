"""Garbage, truncated and mutated real structures never raise anything but our own errors.

Parsers may accept a mutation (it can still be a well-formed structure); whether a mutated quote may VERIFY
is a security property with its own oracle: tests/security/test_attestation_fuzz.py."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import given, settings

from attestation.errors import AttestationError
from attestation.eventlog import parse_event_log
from attestation.tpm2.attest import parse_attest
from attestation.tpm2.public import parse_public
from attestation.tpm2.signature import parse_signature
from tests.support.mutations import mutations
from tests.unit.attestation.evidence import quote_case, recorded

CASE = quote_case("ecc-sha256")
LOG = bytes.fromhex(recorded()["event_log"])
FUZZ = settings(max_examples=300, deadline=None)


def _only_ours(parse: object, data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse(data)  # type: ignore[operator]


@FUZZ
@given(mutations(CASE["ak_public"]))
def test_public(data: bytes) -> None:
    _only_ours(parse_public, data)


@FUZZ
@given(mutations(CASE["attest"]))
def test_attest(data: bytes) -> None:
    _only_ours(parse_attest, data)


@FUZZ
@given(mutations(CASE["signature"]))
def test_signature(data: bytes) -> None:
    _only_ours(parse_signature, data)


@FUZZ
@given(mutations(LOG))
def test_event_log(data: bytes) -> None:
    _only_ours(parse_event_log, data)


REAL_LOG = (Path(__file__).resolve().parents[2] / "data" / "eventlogs" / "event-sd-boot-fedora37.bin").read_bytes()


@FUZZ
@given(mutations(REAL_LOG))
def test_real_event_log(data: bytes) -> None:
    _only_ours(parse_event_log, data)
