"""The run loop's pace (syncer.agent.pace), which the syncer and the fleet benchmarks' simulated agents share: a
lost or refusing hub is retried with full jitter and its Retry-After, contact starts the backoff again."""

from __future__ import annotations

import asyncio
import random

import pytest

from edgetrust._internal.retry import Backoff
from syncer.agent import RETRY_CAP_S, SyncOutcome, SyncResult, pace, run_backoff


def _backoff() -> Backoff:
    return Backoff(base_s=0.01, cap_s=0.08, rng=random.Random(7))


@pytest.mark.parametrize("result", [SyncResult.UNREACHABLE, SyncResult.SOURCE_REFUSED])
def test_a_lost_or_refusing_source_is_waited_out_in_a_growing_window(result: SyncResult) -> None:
    backoff = _backoff()
    waits = [asyncio.run(pace(SyncOutcome(result), backoff)) for _ in range(4)]
    assert all(w is not None for w in waits)
    assert [w is not None and 0 <= w <= 0.01 * 2**i for i, w in enumerate(waits)] == [True] * 4
    assert backoff.attempt == 4


def test_the_hubs_retry_after_is_obeyed() -> None:
    outcome = SyncOutcome(SyncResult.UNREACHABLE, retry_after_s=0.05)
    waited = asyncio.run(pace(outcome, _backoff()))
    assert waited is not None
    assert 0.05 <= waited <= 0.08


@pytest.mark.parametrize("result", [SyncResult.APPLIED, SyncResult.NOT_MODIFIED, SyncResult.REFUSED])
def test_contact_syncs_again_at_once_and_restarts_the_backoff(result: SyncResult) -> None:
    backoff = _backoff()
    asyncio.run(pace(SyncOutcome(SyncResult.UNREACHABLE), backoff))
    assert asyncio.run(pace(SyncOutcome(result), backoff)) is None
    assert backoff.attempt == 0


def test_the_run_loop_backs_off_from_one_second_to_its_cap() -> None:
    backoff = run_backoff()
    assert (backoff.base_s, backoff.cap_s) == (1.0, RETRY_CAP_S)
    waits = [backoff.next_delay() for _ in range(40)]
    assert max(waits) <= RETRY_CAP_S
    assert max(waits[10:]) > 1.0  # the window has grown past its base
