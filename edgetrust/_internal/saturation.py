"""A saturated server says so: past a bound on what it is working on, a request is answered 503 with
Retry-After at once, never queued until the client's timeout.

A hub that takes every request a storm brings (10,000 clusters coming back together after an outage) works on
each a little, answers all of them late, and the clients time out, retry, and add to the storm: the work it
did was wasted. Refused at once, a client waits as told (`Retry-After`, spread by the plane's full-jitter
backoff, `edgetrust._internal.retry`) and comes back when there is room. Two bounds, each counted apart:

- `max_in_flight`: requests being worked on (an enrollment's quote check, a publish, a report);
- `max_long_polls`: long polls held (a cluster's `?wait=` poll), which cost a connection and a few bytes
  each but no work: they have a bound of their own, far higher, so they never take the room of real work,
  and real work never refuses a long poll.

Paths in `exempt` (the liveness probe) are never refused: a saturated replica is alive, and a probe failing
would have it restarted, which makes the storm worse. The connection cap (serving.py) is the bound below
this one: it refuses what would not get an fd; this refuses what would not get an answer in time.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    #: requests worked on at once; one more is answered 503
    max_in_flight: int = 512
    #: long polls held at once; one more is answered 503
    max_long_polls: int = 32768
    #: what a refused client is told to wait (seconds); its backoff spreads the fleet over the window past it
    retry_after_s: int = 2
    #: paths never refused (the liveness probe)
    exempt: frozenset[str] = frozenset({"/healthz"})

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.max_long_polls < 1 or self.retry_after_s < 1:
            raise ValueError(f"request limits must be at least 1: {self}")


class Saturation:
    """The ASGI middleware; `is_long_poll(scope)` says which requests count against `max_long_polls`."""

    def __init__(self, app: ASGIApp, limits: RequestLimits, *, is_long_poll: Callable[[Scope], bool]) -> None:
        self._app = app
        self.limits = limits
        self._is_long_poll = is_long_poll
        self.in_flight = 0
        self.long_polls = 0
        #: how many requests were refused since start (for the log and the tests)
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.limits.exempt:
            await self._app(scope, receive, send)
            return
        long_poll = self._is_long_poll(scope)
        if long_poll:
            if self.long_polls >= self.limits.max_long_polls:
                await self._refuse(send, f"{self.long_polls} long polls are held, the most this server holds")
                return
            self.long_polls += 1
        else:
            if self.in_flight >= self.limits.max_in_flight:
                await self._refuse(send, f"{self.in_flight} requests are in progress, the most this server takes")
                return
            self.in_flight += 1
        try:
            await self._app(scope, receive, send)
        finally:  # one event loop: no lock needed around the counters
            if long_poll:
                self.long_polls -= 1
            else:
                self.in_flight -= 1

    async def _refuse(self, send: Send, why: str) -> None:
        self.refused += 1
        body = json.dumps(
            {"error": "server_saturated", "reason": f"{why}; retry after {self.limits.retry_after_s} s"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(self.limits.retry_after_s).encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def query_wait(scope: Scope) -> float:
    """The `wait` query parameter of a request (0 when absent or not a number): a long poll's length."""
    from urllib.parse import parse_qs

    query = scope.get("query_string", b"")
    values = parse_qs(query.decode("latin-1")).get("wait") if isinstance(query, bytes) else None
    try:
        return float(values[-1]) if values else 0.0
    except ValueError:
        return 0.0
