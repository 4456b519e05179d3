"""The node agent's retry loop (Identities.run) backs off with full jitter and a cap, and obeys the hub's
Retry-After: two agents that lost the hub together do not retry in step, and none comes back before the hub
asked."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from edgetrust._internal import hubclient
from trustd.agent.identities import HubClient, Identities
from trustd.errors import HubUnreachableError


class _StoppedError(Exception):
    pass


class _DownHub(HubClient):
    """A hub that answers nothing but `error`."""

    def __init__(self, error: HubUnreachableError) -> None:
        self._error = error

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        raise self._error


def _delays(monkeypatch: pytest.MonkeyPatch, error: HubUnreachableError, count: int) -> list[float]:
    """The agent's waits, as it asks asyncio for them; asyncio.sleep is patched process-wide, so the waits of
    other threads (a server an earlier test left winding down) go to the real sleep, not into the record."""
    waited: list[float] = []
    real_sleep = asyncio.sleep
    ours = threading.get_ident()

    async def recording_sleep(delay: float) -> None:
        if threading.get_ident() != ours:
            await real_sleep(delay)
            return
        waited.append(delay)
        if len(waited) >= count:
            raise _StoppedError

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    with pytest.raises(_StoppedError):
        asyncio.run(Identities(_DownHub(error)).run())
    return waited


def test_two_agents_that_lost_the_hub_back_off_jittered_growing_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    down = HubUnreachableError("the hub is unreachable: connection refused")
    first, second = _delays(monkeypatch, down, 12), _delays(monkeypatch, down, 12)
    assert first != second  # not in lockstep
    assert all(0.0 <= d <= 60.0 for d in first + second)  # the cap
    assert first[0] <= 1.0
    assert second[0] <= 1.0
    assert max(first[6:] + second[6:]) > 4.0  # the window grew (P(all 12 draws under 4 s) is ~1e-10)


def test_the_hubs_retry_after_is_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    body = b'{"error": "unavailable", "reason": "store down"}'
    failure = hubclient.failure_of(503, {"Retry-After": "7"}, body, "/v1/agent/entries")
    error = failure.convert(unreachable=HubUnreachableError, otherwise=HubUnreachableError)
    assert isinstance(error, HubUnreachableError)
    assert error.retry_after == 7.0
    assert "retry after 7 s" in error.diagnostics()
    waited = _delays(monkeypatch, error, 5)
    assert all(7.0 <= d <= 60.0 for d in waited)
