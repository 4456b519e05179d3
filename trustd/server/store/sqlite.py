"""The embedded store: one SQLite file, WAL journal; the statements and logic are `SqlStore`'s.

One connection guarded by a lock: enrollment writes are tiny and SQLite serialises writers anyway, so a
pool would add nothing but lock contention inside SQLite. A call is microseconds of in-process work, so async
code calls it on the event loop (`blocking` is False): a hop to a worker thread would cost more than the call.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trustd.errors import StoreError
from trustd.server.store.schema import SQLITE
from trustd.server.store.sql import IntegrityViolation, SqlStore, Statements, Tx

T = TypeVar("T")

#: `RETURNING` (consume a challenge in one statement, an audit row's id, a revocation's sequence) came in 3.35
MIN_SQLITE = (3, 35, 0)


class SQLiteStore(SqlStore):
    dialect = SQLITE

    def __init__(self, path: str | Path) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old for the store: it needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (RETURNING)"
            )
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._tx = Statements(self._db)
        try:
            self._migrate()
        except (sqlite3.Error, IntegrityViolation) as exc:
            raise StoreError(f"store migration failed: {exc}") from exc

    def _transaction(self, work: Callable[[Tx], T]) -> T:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(self._tx)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as exc:
                raise IntegrityViolation(str(exc)) from exc
            except sqlite3.OperationalError as exc:  # locked past busy_timeout, disk full, I/O error
                raise StoreError(f"the SQLite store failed: {exc}") from exc
            return result

    def _read(self, work: Callable[[Tx], T]) -> T:
        with self._lock:
            try:
                return work(self._tx)
            except sqlite3.OperationalError as exc:
                raise StoreError(f"the SQLite store failed: {exc}") from exc

    def _lock_schema(self, tx: Tx) -> None:
        """BEGIN IMMEDIATE holds the file's write lock already: another process migrating waits for it."""

    def _schema_version(self, tx: Tx) -> int:
        (row,) = tx.rows("PRAGMA user_version")
        return int(row["user_version"])

    def _set_schema_version(self, tx: Tx, version: int) -> None:
        tx.run(f"PRAGMA user_version={int(version)}")  # a PRAGMA takes no parameters

    def _notify(self, tx: Tx, channel: str) -> None:
        """One replica on a SQLite file: its own changes wake its long polls in process, nobody else listens."""

    def close(self) -> None:
        with self._lock:
            self._db.close()
