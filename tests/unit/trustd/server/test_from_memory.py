"""`from_memory_or_off_loop`: the agent's hot path stays on the event loop only while it needs no store, and a
CA key on a token always signs off the loop (a call that may block must never run on the loop)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from trustd.server.store import NeedsStore, from_memory_or_off_loop


def calls_of(store: Any, *, cached: bool, in_memory: bool = True) -> list[tuple[bool, bool]]:
    """(from_memory, on the loop's thread) for each call the helper made."""
    made: list[tuple[bool, bool]] = []

    async def run() -> str:
        loop_thread = threading.get_ident()

        def call(from_memory: bool) -> str:
            made.append((from_memory, threading.get_ident() == loop_thread))
            if from_memory and not cached:
                raise NeedsStore("not cached")
            return "svid"

        return await from_memory_or_off_loop(store, call, in_memory=in_memory)

    assert asyncio.run(run()) == "svid"
    return made


@pytest.mark.parametrize(
    ("cached", "in_memory", "expected"),
    [
        (True, True, [(True, True)]),  # cached: answered on the loop, the store not touched
        (False, True, [(True, True), (False, False)]),  # not cached: asked again off the loop
        (True, False, [(False, False)]),  # a token's key: off the loop whatever is cached
    ],
)
def test_a_blocking_store_is_only_used_off_the_loop(
    cached: bool, in_memory: bool, expected: list[tuple[bool, bool]]
) -> None:
    assert calls_of(SimpleNamespace(blocking=True), cached=cached, in_memory=in_memory) == expected


def test_a_store_that_does_not_block_is_used_on_the_loop() -> None:
    assert calls_of(SimpleNamespace(blocking=False), cached=False) == [(False, True)]
