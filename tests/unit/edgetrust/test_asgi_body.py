"""The bounded ASGI body reader (edgetrust/_internal/asgi_body.py): a declared size over the limit is refused
before a byte is read, a streamed one as soon as it passes, a Content-Length that is not ASCII digits is
refused (not parsed by int()), a cut-off body is an error, and a body within the limit comes back whole."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from starlette.types import Message, Receive, Scope

from edgetrust._internal.asgi_body import (
    BadContentLengthError,
    BodyMeter,
    BodyTooLargeError,
    ClientGoneError,
    declared_length,
    read_body,
)


def _scope(*lengths: bytes) -> Scope:
    return {"type": "http", "headers": [(b"content-length", v) for v in lengths]}


def _receiver(messages: Iterator[Message], pulled: list[int]) -> Receive:
    async def receive() -> Message:
        pulled.append(1)
        return next(messages)

    return receive


def _chunks(*bodies: bytes) -> Iterator[Message]:
    for n, body in enumerate(bodies):
        yield {"type": "http.request", "body": body, "more_body": n < len(bodies) - 1}


def _endless() -> Iterator[Message]:
    while True:
        yield {"type": "http.request", "body": b"x" * 1000, "more_body": True}


def test_a_body_within_the_limit_comes_back_whole_and_one_chunk_is_not_copied() -> None:
    pulled: list[int] = []
    assert asyncio.run(read_body(_scope(b"6"), _receiver(_chunks(b"ab", b"", b"cdef"), pulled), 6)) == b"abcdef"
    one = b"y" * 100
    assert asyncio.run(read_body(_scope(), _receiver(_chunks(one), pulled), 100)) is one
    assert asyncio.run(read_body(_scope(b"0"), _receiver(_chunks(b""), pulled), 100)) == b""


def test_a_declared_size_over_the_limit_is_refused_before_any_byte_is_read() -> None:
    pulled: list[int] = []
    with pytest.raises(BodyTooLargeError, match="limited to 1024 bytes"):
        asyncio.run(read_body(_scope(str(64 * 1024 * 1024).encode()), _receiver(_endless(), pulled), 1024))
    assert pulled == []


def test_an_endless_stream_is_refused_as_soon_as_it_passes_the_limit() -> None:
    pulled: list[int] = []
    with pytest.raises(BodyTooLargeError, match="limited to 5000 bytes"):
        asyncio.run(read_body(_scope(), _receiver(_endless(), pulled), 5000))
    assert len(pulled) == 6  # the sixth thousand passed the limit: nothing more was pulled
    pulled.clear()
    with pytest.raises(BodyTooLargeError):  # declaring little and sending more is no way past the limit
        asyncio.run(read_body(_scope(b"10"), _receiver(_endless(), pulled), 5000))


@pytest.mark.parametrize(
    "value", [b"", b" 12", b"12 ", b"+12", b"-1", b"1_0", b"0x10", b"1e3", "²".encode(), "\u0661".encode()]
)
def test_a_content_length_that_is_not_ascii_digits_is_refused(value: bytes) -> None:
    with pytest.raises(BadContentLengthError, match="not a number"):
        declared_length(_scope(value), 1000)


def test_two_content_lengths_that_disagree_are_refused() -> None:
    with pytest.raises(BadContentLengthError, match="two different"):
        declared_length(_scope(b"5", b"500"), 1000)
    assert declared_length(_scope(b"5", b"5"), 1000) == 5
    assert declared_length(_scope(), 1000) is None


def test_a_client_gone_mid_body_is_an_error_not_a_short_body() -> None:
    def cut() -> Iterator[Message]:
        yield {"type": "http.request", "body": b'{"half', "more_body": True}
        yield {"type": "http.disconnect"}

    with pytest.raises(ClientGoneError, match="went away"):
        asyncio.run(read_body(_scope(), _receiver(cut(), []), 1000))


def test_the_meter_counts_streamed_messages_for_a_middleware() -> None:
    meter = BodyMeter(10)
    meter.count({"type": "http.request", "body": b"12345"})
    meter.count({"type": "http.request", "body": b"67890"})
    assert meter.seen == 10
    with pytest.raises(BodyTooLargeError):
        meter.count({"type": "http.request", "body": b"!"})
