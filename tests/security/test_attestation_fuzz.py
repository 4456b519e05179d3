"""Forged quotes: real swtpm evidence (attest, signature, nonce, PCR values) mutated, then verified.

The old fuzzer suppressed `AttestationError` and so passed whatever the verifier did with a mutation: a
verifier that accepted a forged quote passed too. The oracle decides instead: a mutation that left every
byte as it was must verify, and one that changed any byte must be refused with an `AttestationError`
(anything else escaping is a bug as well). The last test shows the oracle catching a verifier that accepts a
mutation, where the old harness saw nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import AttestationError
from attestation.quote import verify_quote
from attestation.tpm2.constants import HashAlg
from attestation.tpm2.public import parse_public
from tests.support.mutations import mutations
from tests.unit.attestation.evidence import CASES, quote_case

FUZZ = settings(max_examples=150, deadline=None)


@dataclass(frozen=True)
class Evidence:
    attest: bytes
    signature: bytes
    nonce: bytes
    pcr_values: dict[HashAlg, dict[int, bytes]]


Verifier = Callable[..., Any]


def _genuine(name: str) -> tuple[Any, Evidence]:
    case = quote_case(name)
    evidence = Evidence(case["attest"], case["signature"], case["nonce"], case["pcr_values"])
    return parse_public(case["ak_public"]), evidence


def oracle(verify: Verifier, ak: Any, genuine: Evidence, candidate: Evidence) -> None:
    """Unchanged evidence verifies; changed evidence is refused with our error. Raises AssertionError if not."""
    if candidate == genuine:
        verify(ak=ak, **vars(candidate))  # must not raise: the genuine quote is good
        return
    try:
        verify(ak=ak, **vars(candidate))
    except AttestationError:
        return
    changed = [f for f in vars(genuine) if getattr(genuine, f) != getattr(candidate, f)]
    raise AssertionError(f"a quote mutated in {changed} verified: the verifier accepted a forgery")


def _pcr_mutation(values: dict[HashAlg, dict[int, bytes]]) -> st.SearchStrategy[dict[HashAlg, dict[int, bytes]]]:
    """One sent PCR value of one bank mutated (truncated, flipped, garbage)."""
    slots = [(bank, index) for bank, pcrs in values.items() for index in pcrs]

    def mutate(slot: tuple[HashAlg, int]) -> st.SearchStrategy[dict[HashAlg, dict[int, bytes]]]:
        bank, index = slot
        return mutations(values[bank][index], garbage=80).map(
            lambda v: {b: {i: (v if (b, i) == slot else p) for i, p in pcrs.items()} for b, pcrs in values.items()}
        )

    return st.sampled_from(slots).flatmap(mutate)


def _mutated(genuine: Evidence) -> st.SearchStrategy[Evidence]:
    """One field mutated at a time, or attest and signature together (a forger controls both)."""
    return st.one_of(
        mutations(genuine.attest).map(lambda v: replace(genuine, attest=v)),
        mutations(genuine.signature).map(lambda v: replace(genuine, signature=v)),
        mutations(genuine.nonce, garbage=64).map(lambda v: replace(genuine, nonce=v)),
        _pcr_mutation(genuine.pcr_values).map(lambda v: replace(genuine, pcr_values=v)),
        st.tuples(mutations(genuine.attest), mutations(genuine.signature)).map(
            lambda p: replace(genuine, attest=p[0], signature=p[1])
        ),
    )


@pytest.mark.parametrize("name", CASES)
def test_mutated_quote_never_verifies(name: str) -> None:
    ak, genuine = _genuine(name)
    oracle(verify_quote, ak, genuine, genuine)  # the oracle's other half: the genuine quote verifies

    @FUZZ
    @given(_mutated(genuine))
    def forged(candidate: Evidence) -> None:
        oracle(verify_quote, ak, genuine, candidate)

    forged()


def _accepts_any_signature(**evidence: Any) -> Any:
    """A broken verifier: it checks the signature it was built with, not the one it is given."""
    return verify_quote(**{**evidence, "signature": quote_case("ecc-sha256")["signature"]})


def test_oracle_catches_a_verifier_that_accepts_a_forged_signature() -> None:
    ak, genuine = _genuine("ecc-sha256")
    flipped = bytearray(genuine.signature)
    flipped[-1] ^= 0x01
    forged = replace(genuine, signature=bytes(flipped))
    assert forged.signature != genuine.signature  # a real mutation: a different byte string
    with pytest.raises(AttestationError):
        verify_quote(ak=ak, **vars(forged))  # the real verifier refuses it ...
    oracle(verify_quote, ak, genuine, forged)  # ... so the oracle passes it
    with pytest.raises(AssertionError, match=r"mutated in \['signature'\] verified"):
        oracle(_accepts_any_signature, ak, genuine, forged)  # the broken one is caught
    # what the old harness (suppress AttestationError) got and did not look at: a clean return, a forgery verified
    assert _accepts_any_signature(ak=ak, **vars(forged)).nonce == genuine.nonce
