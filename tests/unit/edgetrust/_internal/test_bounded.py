"""The bounded reader (edgetrust/_internal/bounded.py): a limit refuses, never truncates; the declared size and
the digest are held to exactly; nothing past the bound is pulled from the stream."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import pytest

from edgetrust._internal.bounded import BoundedReadError, aread_bounded, read_bounded


def endless(pulled: list[int]) -> Iterator[bytes]:
    while True:
        pulled.append(1)
        yield b"x" * 1000


def test_stops_at_the_smaller_of_declared_and_limit_without_reading_on() -> None:
    pulled: list[int] = []
    with pytest.raises(BoundedReadError, match="passes the size it declared \\(1024 bytes\\)"):
        read_bounded(endless(pulled), "layer", limit=8 * 1024 * 1024, declared=1024)
    assert len(pulled) == 2
    pulled.clear()
    with pytest.raises(BoundedReadError, match="passes the limit \\(5000 bytes\\)"):
        read_bounded(endless(pulled), "answer", limit=5000)
    assert len(pulled) == 6


def test_declared_size_and_digest_are_exact() -> None:
    body = b"a" * 100
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert read_bounded([body[:50], body[50:]], "b", limit=1000, declared=100, digest=digest) == body
    with pytest.raises(BoundedReadError, match="not the 101 it declared"):
        read_bounded([body], "b", limit=1000, declared=101)
    with pytest.raises(BoundedReadError, match="does not match its digest"):
        read_bounded([body[:-1] + b"b"], "b", limit=1000, digest=digest)
    with pytest.raises(BoundedReadError, match="over the 10-byte limit"):
        read_bounded([], "b", limit=10, declared=11)
    with pytest.raises(BoundedReadError, match="is not sha256"):
        read_bounded([body], "b", limit=1000, digest="md5:abc")


def test_async_streams_are_bounded_the_same_way() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"y" * 1000

    async def read() -> bytes:
        return await aread_bounded(chunks(), "hub answer", limit=10_000)

    with pytest.raises(BoundedReadError, match="passes the limit"):
        asyncio.run(read())
