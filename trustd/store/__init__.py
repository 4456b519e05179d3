"""Where the hub remembers devices, challenges, issued SVIDs and what happened (audit).

`open_store(url)` picks the backend from a URL so that deployments choose without code changes:
`sqlite:///path/trustd.db` (embedded default) today; PostgreSQL joins behind the same `Store` protocol.
"""

from __future__ import annotations

from trustd.errors import StoreError
from trustd.store.base import AuditEvent, ChallengeRecord, DeviceRecord, RevocationRecord, Store, SvidRecord

__all__ = ["AuditEvent", "ChallengeRecord", "DeviceRecord", "RevocationRecord", "Store", "SvidRecord", "open_store"]


def open_store(url: str) -> Store:
    if url.startswith("sqlite://"):
        from trustd.store.sqlite import SQLiteStore

        # As SQLAlchemy spells it: sqlite:///relative/path, sqlite:////absolute/path, sqlite:// for memory.
        path = url.removeprefix("sqlite://").removeprefix("/")
        return SQLiteStore(path or ":memory:")
    raise StoreError(f"unsupported store URL {url.split(':', 1)[0]!r}: use sqlite:///path/to/trustd.db")
