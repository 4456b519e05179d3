"""The shared store: PostgreSQL, for a fleet bigger than one hub machine (several trustd replicas on one database).

The statements and the guarantees are `SqlStore`'s (each made by the database, so it holds across replicas);
this module runs them on a connection pool (psycopg_pool):

- A lost connection (PostgreSQL restarted, a failover) is the pool's to notice and replace: a connection is
  checked as it is taken (`_check`), and one found dead has the pool check every idle one at once, so a call
  after a restart waits for one new connection rather than for a backoff per dead one. A call waits at most
  `WAIT_S` for a connection, then fails with StoreError (503, retry). Every write is one transaction, so
  nothing applies twice: a failure before COMMIT applies nothing, and a write repeated after a lost COMMIT
  answer meets the unique constraints and is refused as a conflict rather than duplicated.
- A transaction the server rolled back to break a deadlock or a serialization conflict (two replicas trimming
  one EK's challenges at once) ran not at all, and is run once more.
- What other replicas must learn at once (a rollout written, a revocation) is notified on COMMIT, and
  `subscribe` listens (LISTEN/NOTIFY, store/notify.py).
- Migrations take an advisory lock, so replicas starting together migrate once.
- A call waits on the network (`blocking`): async code runs it on a worker thread (`trustd.server.store.off_loop`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from trustd.errors import StoreError
from trustd.server.store.notify import Listener
from trustd.server.store.schema import POSTGRESQL
from trustd.server.store.sql import IntegrityViolation, SqlStore, Statements, Tx

T = TypeVar("T")

#: how long a call waits for a connection (the database restarting) before it answers "unavailable"
WAIT_S = 5.0
#: how long trustd waits at start for a database that is not up yet (not for one that refuses it)
START_WAIT_S = 15.0
#: a lost connection's replacement is tried 1 s, then 2 s apart for this long, then the attempts start over: the
#: pool's own backoff would grow to minutes in a long outage, and the hub would serve that long after the
#: database is back
RECONNECT_S = 5.0
CONNECT_TIMEOUT_S = 5
#: connections per replica: calls come from the worker threads of the async routes and the sync ones
POOL_MIN, POOL_MAX = 1, 16
_MIGRATION_LOCK = 0x65646765  # advisory lock id ("edge")


class PostgresStore(SqlStore):
    blocking = True
    shared = True
    dialect = POSTGRESQL

    def __init__(self, url: str) -> None:
        self._url = url
        self._listeners: list[Listener] = []
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, "row_factory": dict_row},
            check=self._check,
            reconnect_timeout=RECONNECT_S,
            reconnect_failed=_start_over,
            timeout=WAIT_S,
            name="trustd-store",
            open=False,
        )
        try:
            self._open(url)
            self._migrate()
        except (psycopg.Error, IntegrityViolation) as exc:
            self._pool.close()
            raise StoreError(f"store migration failed: {_safe(exc)}") from exc
        except BaseException:
            self._pool.close()
            raise

    def _open(self, url: str) -> None:
        """Open the pool, waiting up to START_WAIT_S for the database; a refusal (password, no such database)
        fails at once, as waiting would not change it."""
        first: Exception | None = None
        try:
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
        except psycopg.OperationalError as exc:
            if "authentication failed" in str(exc) or "does not exist" in str(exc):
                raise StoreError(f"cannot reach the PostgreSQL store: {_safe(exc)}") from exc
            first = exc
        try:
            self._pool.open(wait=True, timeout=START_WAIT_S)
        except PoolTimeout as exc:
            raise StoreError(f"cannot reach the PostgreSQL store: {_safe(first or exc)}") from exc

    def _check(self, db: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out (one empty round trip)."""
        try:
            db.execute("")
        except psycopg.Error:
            # one connection lost is most often all of them (a restart, a failover): have the pool drop every
            # dead idle one and open new ones now
            self._pool.check()
            raise

    # -- the driver --------------------------------------------------------------------------------------
    def _transaction(self, work: Callable[[Tx], T]) -> T:
        try:
            return self._run(work, transaction=True)
        except pg_errors.TransactionRollback:
            try:  # rolled back by the server (deadlock, serialization): it ran not at all, once more
                return self._run(work, transaction=True)
            except pg_errors.TransactionRollback as exc:
                raise StoreError(f"the PostgreSQL store failed: {_safe(exc)}") from exc

    def _read(self, work: Callable[[Tx], T]) -> T:
        return self._run(work, transaction=False)

    def _run(self, work: Callable[[Tx], T], *, transaction: bool) -> T:
        try:
            with self._pool.connection() as db:
                if not transaction:
                    return work(Statements(db))
                with db.transaction():
                    return work(Statements(db))
        except pg_errors.IntegrityError as exc:
            raise IntegrityViolation(_safe(exc)) from exc
        except pg_errors.TransactionRollback:
            raise
        except PoolTimeout as exc:
            raise StoreError(f"the PostgreSQL store is unreachable: no connection within {WAIT_S:g} s") from exc
        except psycopg.OperationalError as exc:
            raise StoreError(f"the PostgreSQL store failed: {_safe(exc)}") from exc

    def _lock_schema(self, tx: Tx) -> None:
        tx.run("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        tx.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")

    def _schema_version(self, tx: Tx) -> int:
        found = tx.rows("SELECT version FROM schema_version")
        return int(found[0]["version"]) if found else 0

    def _set_schema_version(self, tx: Tx, version: int) -> None:
        tx.run("DELETE FROM schema_version")
        tx.run("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def _notify(self, tx: Tx, channel: str) -> None:
        tx.run("SELECT pg_notify(%s, '')", (channel,))  # sent on COMMIT, to every replica that listens

    def subscribe(self, channel: str, listener: Callable[[], None]) -> Callable[[], None]:
        subscription = Listener(self._url, channel, listener).start()
        self._listeners.append(subscription)

        def stop() -> None:
            subscription.stop()
            if subscription in self._listeners:
                self._listeners.remove(subscription)

        return stop

    def close(self) -> None:
        for subscription in list(self._listeners):
            subscription.join()
        self._listeners.clear()
        self._pool.close()


def _start_over(pool: ConnectionPool[Any]) -> None:
    """The pool gave up a replacement connection (RECONNECT_S): try again at once, and on (see RECONNECT_S)."""
    if not pool.closed:
        with contextlib.suppress(psycopg.Error):  # closed meanwhile
            pool.check()


def _safe(exc: Exception) -> str:
    """The error's first line: libpq names the host, port and user, never the password."""
    return str(exc).strip().split("\n", 1)[0]
