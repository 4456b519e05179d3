"""Retry with full jitter and a cap (edgetrust/_internal/retry.py): waits differ between clients, grow with the
attempts, never pass the cap, obey a server's Retry-After within the cap, and a fleet that lost the hub at the
same instant does not come back in lockstep."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from edgetrust._internal.retry import Backoff, full_jitter, retry_after_seconds, window


def test_two_backoffs_draw_different_waits() -> None:
    first, second = Backoff(base_s=1.0, cap_s=60.0), Backoff(base_s=1.0, cap_s=60.0)
    a = [first.next_delay() for _ in range(8)]
    b = [second.next_delay() for _ in range(8)]
    assert a != b
    assert len(set(a)) == len(a)  # not one fixed schedule repeated


def test_waits_grow_with_the_attempts_and_never_pass_the_cap() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(7))
    windows = [window(n, base_s=1.0, cap_s=60.0) for n in range(12)]
    assert windows[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert windows[7:] == [60.0] * 5
    samples: list[list[float]] = [[] for _ in range(10)]
    for _ in range(400):
        backoff.reset()
        for attempt in range(10):
            samples[attempt].append(backoff.next_delay())
    for attempt, drawn in enumerate(samples):
        assert all(0.0 <= d <= windows[attempt] for d in drawn), attempt
        # full jitter: the draws use the whole window, not a sliver at its end
        assert max(drawn) > 0.9 * windows[attempt]
        assert min(drawn) < 0.1 * windows[attempt]
    means = [sum(d) / len(d) for d in samples]
    assert means[0] < means[2] < means[4] < means[6]  # the waits grow
    assert max(max(d) for d in samples) <= 60.0
    assert Backoff(base_s=1.0, cap_s=60.0).next_delay() <= 1.0
    huge = Backoff(base_s=1.0, cap_s=60.0)
    huge.attempt = 10_000  # no overflow, still capped
    assert 0.0 <= huge.next_delay() <= 60.0


def test_reset_starts_again_from_the_smallest_window() -> None:
    backoff = Backoff(base_s=2.0, cap_s=300.0)
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= 2.0


def test_a_thousand_clients_that_lost_the_hub_together_come_back_spread_not_in_lockstep() -> None:
    clients = [Backoff(base_s=1.0, cap_s=60.0) for _ in range(1000)]
    first = [c.next_delay() for c in clients]
    assert len({round(d, 6) for d in first}) > 990  # nearly every client at its own microsecond
    buckets = [0] * 10  # over the 1 s window, each tenth holds about a tenth of the fleet
    for delay in first:
        buckets[min(9, int(delay * 10))] += 1
    assert all(50 <= n <= 150 for n in buckets), buckets
    # and the hub is told "come back in 5 s": nobody earlier, and still spread over the window past it
    told = [Backoff(base_s=1.0, cap_s=60.0).next_delay(retry_after_s=5.0) for _ in range(1000)]
    assert min(told) >= 5.0
    assert max(told) <= 6.0
    assert len({round(d, 6) for d in told}) > 990


def test_retry_after_is_obeyed_but_bounded_by_the_cap() -> None:
    backoff = Backoff(base_s=1.0, cap_s=30.0)
    assert backoff.next_delay(retry_after_s=86_400.0) == 30.0  # a bogus day-long wait does not park the node
    for bogus in (0.0, -5.0, float("nan"), float("inf")):
        assert 0.0 <= Backoff(base_s=1.0, cap_s=30.0).next_delay(retry_after_s=bogus) <= 1.0


def test_retry_after_header_parsing() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(" 120 ") == 120.0
    for bad in ("", "-1", "1.5", "five", "²", "1_0", "\u0661"):
        assert retry_after_seconds(bad) is None, bad
    now = time.time()
    later = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(later, now=now) == pytest.approx(30.0, abs=1.0)
    earlier = format_datetime(datetime.fromtimestamp(now, UTC) - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(earlier, now=now) == 0.0


def test_full_jitter_helper_and_bad_parameters() -> None:
    rng = random.Random(1)
    assert all(0.0 <= full_jitter(3, base_s=0.5, cap_s=2.0, rng=rng) <= 2.0 for _ in range(100))
    with pytest.raises(ValueError, match="0 < base"):
        Backoff(base_s=0.0, cap_s=1.0)
    with pytest.raises(ValueError, match="0 < base"):
        Backoff(base_s=5.0, cap_s=1.0)


def test_sync_sleep_stops_at_the_deadline_and_async_wait_waits() -> None:
    backoff = Backoff(base_s=10.0, cap_s=10.0)
    started = time.monotonic()
    slept = backoff.sleep(deadline=started + 0.05)
    assert slept <= 0.05
    assert time.monotonic() - started < 1.0
    quick = Backoff(base_s=0.01, cap_s=0.01)
    waited = asyncio.run(quick.wait())
    assert 0.0 <= waited <= 0.01
    assert quick.attempt == 1
