"""Wait for what a running component does by itself (a watcher, a poll), instead of driving it by hand."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(condition: Callable[[], object], what: str, *, timeout_s: float = 30.0, every_s: float = 0.2) -> None:
    """Return once `condition()` is true; fail saying what did not happen within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
