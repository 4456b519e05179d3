from __future__ import annotations

from admission.images.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_and_the_oldest_is_evicted() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(max_entries=2, ttl_s=10, clock=clock)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", 3)
    assert cache.get("b") is None
    assert len(cache) == 2
    clock.now = 11
    assert cache.get("a") is None


def test_max_age_asks_for_something_younger_without_evicting() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(max_entries=4, ttl_s=100, clock=clock)
    cache.put("tag", 1)
    clock.now = 30
    assert cache.get("tag", max_age=10) is None
    entry = cache.get("tag")
    assert entry is not None
    assert entry.value == 1
