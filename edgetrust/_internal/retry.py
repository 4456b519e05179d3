"""Waiting before trying again: exponential backoff with full jitter and a cap, the one retry policy of the plane.

A plain doubling backoff (1, 2, 4 ... s) puts every client that lost the hub at the same moment on the same
schedule: after a hub outage, 10,000 syncers and node agents come back in lockstep and knock it over again.
"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter") draws each wait uniformly from
[0, min(cap, base * 2**attempt)]: the window still grows, so a long outage is not hammered, but the clients
spread evenly over it, and no wait is ever longer than the cap.

A server that says when to come back (`Retry-After`) is obeyed: the wait is never shorter than it asked for
(up to the cap, so a bogus `Retry-After: 86400` cannot park a node for a day), and is spread over the current
backoff window past it, so a fleet told "5 s" does not return at 5.000 s all together.

One `Backoff` per loop: `next_delay()` after each failure, `reset()` after a success; `wait()` / `sleep()` do the
waiting for async and sync callers.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from datetime import UTC

#: attempts past this do not widen the window further (base * 2**64 is past any sane cap; no float overflow)
_MAX_EXPONENT = 64
#: spreading load is not a secret: a generator seeded from the OS is enough, and cheap
_RNG = random.Random()  # noqa: S311


def full_jitter(attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """One wait for the `attempt`-th retry (0 for the first): uniform in [0, min(cap, base * 2**attempt)]."""
    draw = (rng or _RNG).uniform
    return draw(0.0, window(attempt, base_s=base_s, cap_s=cap_s))


def window(attempt: int, *, base_s: float, cap_s: float) -> float:
    """The longest wait of the `attempt`-th retry: base * 2**attempt, never over the cap."""
    return min(cap_s, base_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A `Retry-After` header as seconds from now (delta-seconds or an HTTP date); None when absent or unusable.

    An unusable value is ignored rather than refused: the client falls back to its own backoff, which is safe."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    left = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, left) if math.isfinite(left) else None


class Backoff:
    """Full-jitter backoff state for one retry loop (not shared between loops: each has its own attempt count)."""

    def __init__(self, *, base_s: float = 1.0, cap_s: float = 60.0, rng: random.Random | None = None) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"backoff needs 0 < base ({base_s}) <= cap ({cap_s})")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or _RNG

    def next_delay(self, retry_after_s: float | None = None) -> float:
        """Seconds to wait before the next try; each call is one more failed attempt.

        Without `retry_after_s`: full jitter over the current window. With it: at least that (bounded by the
        cap), plus full jitter over the current window, still never over the cap."""
        spread = self._rng.uniform(0.0, window(self.attempt, base_s=self.base_s, cap_s=self.cap_s))
        self.attempt += 1
        if retry_after_s is None or not math.isfinite(retry_after_s) or retry_after_s <= 0:
            return spread
        return min(self.cap_s, retry_after_s + spread)

    def reset(self) -> None:
        """After a success: the next failure starts again from the smallest window."""
        self.attempt = 0

    async def wait(self, retry_after_s: float | None = None) -> float:
        """asyncio.sleep(next_delay()); returns the seconds waited (for the log line)."""
        delay = self.next_delay(retry_after_s)
        await asyncio.sleep(delay)
        return delay

    def sleep(self, retry_after_s: float | None = None, *, deadline: float | None = None) -> float:
        """time.sleep(next_delay()), not past `deadline` (a time.monotonic() value); returns the seconds slept."""
        delay = self.next_delay(retry_after_s)
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.monotonic()))
        time.sleep(delay)
        return delay
