"""Reading an answer from a peer we do not trust, with a bound: never more than the limit in memory.

A registry mirror declaring a 1 KiB layer and sending 300 MiB, or a hub (or whoever holds its address) sending
an endless body, must not take a small agent past its memory limit: the body is read chunk by chunk, refused
as soon as it passes the smaller of the size it declared and a hard limit, and its digest (when one is
expected) is checked as it streams. A limit refuses; it never truncates. One reader for every such path (the
syncer's OCI pulls and its hub connection), sync and async.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, Iterable

CHUNK_BYTES = 64 * 1024


class BoundedReadError(Exception):
    """The body broke a bound or did not match its digest; the caller converts it into its own error."""


class _Body:
    def __init__(self, what: str, *, limit: int, declared: int | None, digest: str | None) -> None:
        if declared is not None and declared < 0:
            raise BoundedReadError(f"{what}: declared size {declared} is negative")
        if declared is not None and declared > limit:
            raise BoundedReadError(f"{what}: declares {declared} bytes, over the {limit}-byte limit")
        self._what = what
        self._declared = declared
        self._limit = limit if declared is None else declared
        self._hash = None
        self._digest = digest
        if digest is not None:
            algorithm, _, hexdigest = digest.partition(":")
            if algorithm != "sha256" or len(hexdigest) != 64:
                raise BoundedReadError(f"{what}: digest {digest!r} is not sha256:<64 hex digits>")
            self._hash = hashlib.sha256()
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            bound = "the size it declared" if self._declared is not None else "the limit"
            raise BoundedReadError(f"{self._what}: body passes {bound} ({self._limit} bytes); refused, read stopped")
        if self._hash is not None:
            self._hash.update(chunk)
        self._chunks.append(chunk)

    def finish(self) -> bytes:
        if self._declared is not None and self._size != self._declared:
            raise BoundedReadError(f"{self._what}: body is {self._size} bytes, not the {self._declared} it declared")
        if self._hash is not None and "sha256:" + self._hash.hexdigest() != self._digest:
            raise BoundedReadError(f"{self._what}: body does not match its digest {self._digest}")
        return b"".join(self._chunks)


def read_bounded(
    chunks: Iterable[bytes], what: str, *, limit: int, declared: int | None = None, digest: str | None = None
) -> bytes:
    """The whole body, or BoundedReadError the moment it passes min(declared, limit) or ends wrong."""
    body = _Body(what, limit=limit, declared=declared, digest=digest)
    for chunk in chunks:
        body.feed(chunk)
    return body.finish()


async def aread_bounded(
    chunks: AsyncIterable[bytes], what: str, *, limit: int, declared: int | None = None, digest: str | None = None
) -> bytes:
    """read_bounded for an async stream (aiohttp's `response.content.iter_chunked`)."""
    body = _Body(what, limit=limit, declared=declared, digest=digest)
    async for chunk in chunks:
        body.feed(chunk)
    return body.finish()


def declared_length(value: str | None, what: str) -> int | None:
    """A Content-Length header as a size to hold the body to (None when absent); a bad one is refused."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):  # str.isdigit() is True for "²", which int() refuses
        raise BoundedReadError(f"{what}: Content-Length {value!r} is not a size")
    return int(value)
