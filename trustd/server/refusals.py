"""Refusals into the audit, aggregated: one row per (event, code, source) and minute, with a count.

Anyone can post garbage to the enrollment endpoints, and a row per refusal let a flood grow the store without
bound. The first refusal of a kind in a minute is written at once, so the audit shows it as soon as it happens
(its subject and reason are the first one's); the further ones of that minute are counted in memory and added
to that row with one UPDATE when the minute ends (at the next refusal, at `flush`, or at shutdown). A minute
holds at most `MAX_SOURCES` distinct rows per event and code; sources past that are counted under "other",
so changing source addresses does not grow the store either.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from trustd.server.store import AuditEvent, Store

WINDOW_S = 60.0
MAX_SOURCES = 32
#: reasons are ours, but may quote a field of the request; a bounded excerpt is what the audit keeps
MAX_REASON = 500


@dataclass
class _Bucket:
    audit_id: int
    pending: int = 0


class RefusalAudit:
    def __init__(self, store: Store, *, window_s: float = WINDOW_S, max_sources: int = MAX_SOURCES) -> None:
        self._store = store
        self._window_s = window_s
        self._max_sources = max_sources
        self._lock = threading.Lock()
        self._window = float("-inf")
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}
        self._sources: dict[tuple[str, str], int] = {}

    def record(self, *, event: str, subject: str, code: str, reason: str, source: str, now: float) -> bool:
        """Count a refusal; True when it opened a new row (the caller logs those, not every one of a flood)."""
        with self._lock:
            window = now - now % self._window_s
            if window != self._window:
                self._flush_locked()
                self._buckets.clear()
                self._sources.clear()
                self._window = window
            key = (event, code, source)
            if key not in self._buckets:
                seen = self._sources.get((event, code), 0)
                if seen >= self._max_sources:
                    key = (event, code, "other")
                else:
                    self._sources[(event, code)] = seen + 1
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.pending += 1
                return False
            detail = {"code": code, "reason": reason[:MAX_REASON], "source": key[2], "window_s": f"{self._window_s:g}"}
            self._buckets[key] = _Bucket(self._store.audit(AuditEvent(now, event, "refused", subject, detail)))
            return True

    def flush(self) -> None:
        """Write the counts not yet in the store (periodically, and before the store closes)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        for bucket in self._buckets.values():
            if bucket.pending:
                self._store.add_to_audit_count(bucket.audit_id, bucket.pending)
                bucket.pending = 0
