"""Reading an ASGI request body with a bound: refused past the limit, declared or streamed, never truncated.

A client that declares 64 MiB, or declares nothing and streams without end, must not make a server buffer it:
`Content-Length` is checked before the first byte is read (ASCII digits only: `int()` would take " 12", "1_0"
or Unicode digits), and the bytes received are counted as they arrive, so nothing past the bound is kept.
The hub's app (a middleware over FastAPI), the hub's SVID fast path and the webhook's review path read
through here; this module raises, and each server answers in its own shape (trustd 413 `body_too_large`,
the webhook an AdmissionReview refusal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the ASGI types only: importing this module costs no web framework
    from starlette.types import Message, Receive, Scope


class BodyError(Exception):
    """The request body cannot be read within the rules; the server converts it into its own answer."""


class BodyTooLargeError(BodyError):
    """Over the limit: declared over it, or streamed past it."""


class BadContentLengthError(BodyError):
    """A Content-Length that is not a size (not ASCII digits), or two that disagree."""


class ClientGoneError(BodyError):
    """The client disconnected before the whole body arrived."""


def declared_length(scope: Scope, limit: int) -> int | None:
    """The request's Content-Length (None when it sends none), refused when malformed or over `limit`."""
    found: int | None = None
    for name, value in scope["headers"]:
        if name != b"content-length":
            continue
        if not (value.isascii() and value.isdigit()):
            raise BadContentLengthError("Content-Length is not a number")
        size = int(value)
        if found is not None and size != found:
            raise BadContentLengthError("the request declares two different Content-Lengths")
        found = size
    if found is not None and found > limit:
        raise BodyTooLargeError(too_large(limit))
    return found


class BodyMeter:
    """Counts the body bytes of a request as they stream through (for a middleware that passes them on)."""

    __slots__ = ("_limit", "seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.seen = 0

    def count(self, message: Message) -> None:
        """Add one `http.request` message; BodyTooLargeError once the total passes the limit."""
        self.seen += len(message.get("body", b""))
        if self.seen > self._limit:
            raise BodyTooLargeError(too_large(self._limit))


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, or a BodyError as soon as it is malformed, over the limit, or cut off.

    One message (the common case) is returned as it came, without a copy; several are joined once."""
    declared_length(scope, limit)
    meter = BodyMeter(limit)
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError("the client went away before sending the whole body")
        meter.count(message)
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(limit: int) -> str:
    return f"request bodies are limited to {limit} bytes"
