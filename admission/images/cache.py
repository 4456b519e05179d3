"""Bounded, expiring memory of what was verified, so a cluster keeps admitting known-good images offline.

Two maps: verdicts keyed by (digest, policy, policy revision) — a changed key or identity makes old verdicts
unreachable — and tag resolutions keyed by image name and tag, used fresh while young and, when the registry
cannot be reached, as a last known answer for as long as its verdict lives.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Entry(Generic[V]):
    value: V
    stored_at: float


class TTLCache(Generic[K, V]):
    """LRU with a ceiling and a time to live; `get(max_age=...)` lets a caller ask for something younger."""

    def __init__(self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("cache needs max_entries >= 1 and ttl_s > 0")
        self._entries: OrderedDict[K, Entry[V]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, *, max_age: float | None = None) -> Entry[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self._clock() - entry.stored_at
        if age > self._ttl:
            del self._entries[key]
            return None
        if max_age is not None and age > max_age:
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: K, value: V) -> None:
        self._entries[key] = Entry(value, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
