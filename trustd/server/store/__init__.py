"""Where the hub remembers devices, challenges, issued SVIDs and what happened (audit).

`open_store(url)` picks the backend from a URL so that deployments choose without code changes:
`sqlite:///path/trustd.db` (embedded default) or `postgresql://user@host/db?sslmode=verify-full` (shared by
several trustd replicas), behind the same `Store` protocol.

The store's methods are synchronous. Async code calls them through `off_loop(store, call)`: on the event loop for
SQLite (a call is microseconds in-process; a hop to a thread costs more than it), on a worker thread for
PostgreSQL (a call waits on the network, and up to a few seconds while the database restarts: on the loop,
that wait would stall every other request, /healthz included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from trustd.errors import StoreError
from trustd.server.store.base import (
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
    "off_loop",
    "open_store",
]

T = TypeVar("T")


def open_store(url: str) -> Store:
    if url.startswith("sqlite://"):
        from trustd.server.store.sqlite import SQLiteStore

        # As SQLAlchemy spells it: sqlite:///relative/path, sqlite:////absolute/path, sqlite:// for memory.
        path = url.removeprefix("sqlite://").removeprefix("/")
        return SQLiteStore(path or ":memory:")
    if url.startswith(("postgresql://", "postgres://")):
        from trustd.server.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(
        f"unsupported store URL {url.split(':', 1)[0]!r}: use sqlite:///path/to/trustd.db or postgresql://..."
    )


class NeedsStore(Exception):  # noqa: N818 - not an error: a signal to go off the loop, never leaves this module's caller
    """Raised by work asked to answer from memory only (`from_memory_or_off_loop`) when it would need the store."""


async def from_memory_or_off_loop(store: Store, call: Callable[[bool], T], *, in_memory: bool = True) -> T:
    """`call(True)` on the loop, where it answers from what is in memory (caches) or raises NeedsStore before
    doing anything; then `call(False)` off the loop (`off_loop`). On PostgreSQL the hop to a worker thread costs
    more than an SVID's signing, and a node's standing and entries are cached for a second: the hot path of an
    agent minting stays on the loop, and only a look at the store leaves it. `in_memory` False (a CA key on a
    PKCS#11 token, whose every signature is a call to the token, perhaps across a network): always off the loop."""
    if store.blocking and in_memory:
        try:
            return call(True)
        except NeedsStore:
            pass
    return await off_loop(store, lambda: call(False))


async def off_loop(store: Store, call: Callable[[], T]) -> T:
    """`call()` (work that uses `store`) where it does not hold up the event loop: inline when the store does
    not block, else on a worker thread (anyio's, shared with Starlette's sync routes)."""
    if not store.blocking:
        return call()
    import anyio.to_thread  # here: a device importing the store's records needs no thread plumbing

    return await anyio.to_thread.run_sync(call)
