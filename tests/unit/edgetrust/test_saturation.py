"""The saturation bound's arithmetic, on an ASGI app that holds each request until told: what is counted where,
that a failing request gives its room back, and what a refusal says."""

from __future__ import annotations

import asyncio
import json

import pytest

from edgetrust._internal.saturation import Message, RequestLimits, Saturation, Scope, query_wait


class Held:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: object, send: object) -> None:
        await self.release.wait()
        if scope.get("path") == "/boom":
            raise RuntimeError("the app failed")


def http(path: str, query: bytes = b"") -> Scope:
    return {"type": "http", "path": path, "query_string": query}


async def call(middleware: Saturation, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request"}

    await middleware(scope, receive, send)
    return sent


def test_each_bound_counts_its_own_requests_and_refusals_say_when_to_come_back() -> None:
    async def main() -> None:
        app = Held()
        middleware = Saturation(
            app,
            RequestLimits(max_in_flight=1, max_long_polls=1, retry_after_s=3),
            is_long_poll=lambda scope: query_wait(scope) > 0,
        )
        poll = asyncio.create_task(call(middleware, http("/poll", b"wait=30")))
        work = asyncio.create_task(call(middleware, http("/boom")))
        await asyncio.sleep(0)
        assert (middleware.long_polls, middleware.in_flight) == (1, 1)
        refused = await call(middleware, http("/poll", b"wait=5"))
        assert refused[0]["status"] == 503
        assert (b"retry-after", b"3") in refused[0]["headers"]
        assert json.loads(refused[1]["body"])["error"] == "server_saturated"
        assert (await call(middleware, http("/other")))[0]["status"] == 503
        app.release.set()
        with pytest.raises(RuntimeError):
            await work
        await poll
        assert (middleware.long_polls, middleware.in_flight, middleware.refused) == (0, 0, 2)  # failure gave back

    asyncio.run(main())


def test_exempt_paths_and_other_scopes_are_never_counted() -> None:
    async def main() -> None:
        app = Held()
        app.release.set()
        middleware = Saturation(app, RequestLimits(max_in_flight=1), is_long_poll=lambda scope: False)
        middleware.in_flight = 1  # full
        assert await call(middleware, http("/healthz")) == []  # passed to the app (which sends nothing here)
        assert await call(middleware, {"type": "lifespan"}) == []

    asyncio.run(main())


@pytest.mark.parametrize(
    ("query", "wait"),
    [(b"", 0.0), (b"wait=25", 25.0), (b"wait=abc", 0.0), (b"a=1&wait=0", 0.0), (b"wait=1&wait=2", 2.0)],
)
def test_the_wait_of_a_query(query: bytes, wait: float) -> None:
    assert query_wait(http("/", query)) == wait


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequestLimits(max_in_flight=0)
