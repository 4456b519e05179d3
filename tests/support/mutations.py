"""Mutations of real structures for the fuzzers: garbage, truncations and single-byte flips of a seed.

A flip always changes the byte (XOR with 1..255), a truncation may keep the whole seed, and garbage may be
anything: whether a mutation changed the input is for the oracle to check, not assumed.
"""

from __future__ import annotations

from hypothesis import strategies as st


def mutations(seed: bytes, *, garbage: int = 600) -> st.SearchStrategy[bytes]:
    truncated = st.integers(0, len(seed)).map(lambda n: seed[:n])
    flipped = st.tuples(st.integers(0, len(seed) - 1), st.integers(1, 255)).map(
        lambda p: seed[: p[0]] + bytes([seed[p[0]] ^ p[1]]) + seed[p[0] + 1 :]
    )
    return st.one_of(st.binary(max_size=garbage), truncated, flipped)
