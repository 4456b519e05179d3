"""Where the hub remembers devices, challenges, issued SVIDs and what happened (audit).

`open_store(url)` picks the backend from a URL so that deployments choose without code changes:
`sqlite:///path/trustd.db` (embedded default) or `postgresql://user@host/db?sslmode=verify-full` (shared by
several trustd replicas), behind the same `Store` protocol.
"""

from __future__ import annotations

from trustd.errors import StoreError
from trustd.store.base import (
    AuditEvent,
    ChallengeRecord,
    DeviceRecord,
    EntryRecord,
    RevocationRecord,
    Store,
    SvidRecord,
)

__all__ = [
    "AuditEvent",
    "ChallengeRecord",
    "DeviceRecord",
    "EntryRecord",
    "RevocationRecord",
    "Store",
    "SvidRecord",
    "open_store",
]


def open_store(url: str) -> Store:
    if url.startswith("sqlite://"):
        from trustd.store.sqlite import SQLiteStore

        # As SQLAlchemy spells it: sqlite:///relative/path, sqlite:////absolute/path, sqlite:// for memory.
        path = url.removeprefix("sqlite://").removeprefix("/")
        return SQLiteStore(path or ":memory:")
    if url.startswith(("postgresql://", "postgres://")):
        from trustd.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(
        f"unsupported store URL {url.split(':', 1)[0]!r}: use sqlite:///path/to/trustd.db or postgresql://..."
    )
