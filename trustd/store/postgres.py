"""The shared store: PostgreSQL, for a fleet bigger than one hub machine (several trustd replicas on one database).

Same contract as the SQLite store, but every guarantee must hold across processes, so each is made by the
database, not by a lock in this process: a challenge is consumed by one conditional UPDATE (two replicas
racing for it get one success); a SPIFFE ID is bound to one EK by a unique constraint; the revocation counter
is a sequence. Migrations take an advisory lock, so replicas starting together migrate once.

A lost connection (PostgreSQL restarted, a failover) is re-opened and the operation retried once; every write is
one transaction, so a retry after a failure before COMMIT cannot apply twice, and one after a lost COMMIT
answer meets the unique constraints and is refused as a conflict rather than duplicated.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from trustd.errors import ChallengeError, StoreConflictError, StoreError
from trustd.store.base import AuditEvent, ChallengeRecord, DeviceRecord, EntryRecord, RevocationRecord, SvidRecord
from trustd.store.rows import (
    AUDIT_SELECT,
    REVOCATION_SELECT,
    audit_event,
    challenge_record,
    challenge_values,
    device_record,
    entry_record,
    revocation_record,
    selectors_column,
)

T = TypeVar("T")
RECONNECT_S = 5.0  # how long a call waits for the database to come back before it fails (503): the hub calls the
# store on its event loop, and a longer wait held every other request (the revocation watcher included) with it
_MIGRATION_LOCK = 0x65646765  # advisory lock id ("edge")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE challenges (
        id TEXT PRIMARY KEY,
        ek_fingerprint TEXT NOT NULL,
        ak_public BYTEA NOT NULL,
        nonce BYTEA NOT NULL,
        secret_digest BYTEA NOT NULL,
        claims TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION
    );
    CREATE INDEX challenges_expiry ON challenges (expires_at);
    CREATE TABLE devices (
        ek_fingerprint TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL UNIQUE,
        device_class TEXT NOT NULL,
        claims TEXT NOT NULL,
        ak_name TEXT NOT NULL,
        enrolled_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL
    );
    CREATE TABLE svids (
        serial TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        ek_fingerprint TEXT NOT NULL,
        not_before DOUBLE PRECISION NOT NULL,
        not_after DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL
    );
    CREATE INDEX svids_spiffe_id ON svids (spiffe_id);
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        event TEXT NOT NULL,
        outcome TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE revocations (
        sequence BIGSERIAL PRIMARY KEY,
        spiffe_id TEXT NOT NULL UNIQUE,
        ek_fingerprint TEXT NOT NULL,
        reason TEXT NOT NULL,
        revoked_by TEXT NOT NULL,
        revoked_at DOUBLE PRECISION NOT NULL
    );
    """,
    """
    CREATE TABLE entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        ttl_s INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (spiffe_id, parent_id, selectors)
    );
    CREATE INDEX entries_parent ON entries (parent_id);
    """,
    """
    ALTER TABLE challenges ADD COLUMN purpose TEXT NOT NULL DEFAULT 'enroll';
    CREATE INDEX challenges_ek ON challenges (ek_fingerprint, purpose, created_at);
    ALTER TABLE audit ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
    """,
)


class PostgresStore:
    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._db = self._connect(deadline=time.monotonic() + RECONNECT_S)
        self._migrate()

    def _connect(self, *, deadline: float) -> psycopg.Connection[Any]:
        while True:
            try:
                return psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            except psycopg.OperationalError as exc:
                refused = "authentication failed" in str(exc) or "does not exist" in str(exc)
                if refused or time.monotonic() > deadline:  # waiting does not fix a wrong password
                    raise StoreError(f"cannot reach the PostgreSQL store: {_safe(exc)}") from exc
                time.sleep(0.25)

    def _run(self, operation: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._lock:
            try:
                return operation(self._db)
            except psycopg.OperationalError as exc:
                if not self._db.closed and not self._db.broken:  # the statement failed, the connection did not
                    raise StoreError(f"the PostgreSQL store failed: {_safe(exc)}") from exc
            # the connection is gone (server restart, failover): once more on a new one
            self._db = self._connect(deadline=time.monotonic() + RECONNECT_S)
            try:
                return operation(self._db)
            except psycopg.OperationalError as exc:
                raise StoreError(f"the PostgreSQL store failed: {_safe(exc)}") from exc

    def _migrate(self) -> None:
        def migrate(db: psycopg.Connection[Any]) -> None:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = db.execute("SELECT version FROM schema_version").fetchone()
                version = int(row[0]) if row else 0
                if row is None:
                    db.execute("INSERT INTO schema_version VALUES (0)")
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in filter(str.strip, script.split(";")):
                        db.execute(statement)
                    db.execute("UPDATE schema_version SET version = %s", (number,))

        try:
            self._run(migrate)
        except psycopg.Error as exc:
            raise StoreError(f"store migration failed: {_safe(exc)}") from exc

    @property
    def schema_version(self) -> int:
        row = self._run(lambda db: db.execute("SELECT version FROM schema_version").fetchone())
        return int(row[0]) if row else 0

    # -- challenges ----------------------------------------------------------------------------------------
    def put_challenge(self, challenge: ChallengeRecord, *, keep_per_ek: int = 0) -> None:
        def put(db: psycopg.Connection[Any]) -> None:
            with db.transaction():
                if keep_per_ek > 0:
                    db.execute(
                        "DELETE FROM challenges WHERE ek_fingerprint = %s AND purpose = %s AND (expires_at < %s OR "
                        "id IN (SELECT id FROM challenges WHERE ek_fingerprint = %s AND purpose = %s "
                        "ORDER BY created_at DESC, id OFFSET %s))",
                        (
                            challenge.ek_fingerprint,
                            challenge.purpose,
                            challenge.created_at,
                            challenge.ek_fingerprint,
                            challenge.purpose,
                            keep_per_ek - 1,
                        ),
                    )
                db.execute(
                    "INSERT INTO challenges (id, ek_fingerprint, ak_public, nonce, secret_digest, claims, "
                    "created_at, expires_at, used_at, purpose) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    challenge_values(challenge),
                )

        try:
            self._run(put)
        except pg_errors.TransactionRollback:
            # two replicas trimming the same EK's challenges at once (deadlock, serialization): once more
            self._run(put)

    def consume_challenge(self, challenge_id: str, *, now: float) -> ChallengeRecord:
        def consume(db: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            # one statement: of two replicas answering the same challenge, exactly one gets the row
            return db.execute(
                "UPDATE challenges SET used_at = %s WHERE id = %s AND used_at IS NULL "
                "RETURNING id, ek_fingerprint, ak_public, nonce, secret_digest, claims, "
                "created_at, expires_at, used_at, purpose",
                (now, challenge_id),
            ).fetchone()

        row = self._run(consume)
        if row is None:
            known = self._run(
                lambda db: db.execute("SELECT 1 FROM challenges WHERE id = %s", (challenge_id,)).fetchone()
            )
            if known is None:
                raise ChallengeError(
                    "unknown challenge: it was never issued, or it expired and was purged; start enrollment again"
                )
            raise ChallengeError("this challenge was already answered once (a replayed nonce); start enrollment again")
        record = challenge_record(row)
        if now > record.expires_at:
            raise ChallengeError(
                f"the challenge expired {now - record.expires_at:.0f}s ago (it is valid for "
                f"{record.expires_at - record.created_at:.0f}s); start enrollment again"
            )
        return record

    def purge_challenges(self, *, now: float) -> int:
        return self._run(lambda db: db.execute("DELETE FROM challenges WHERE expires_at < %s", (now,)).rowcount)

    # -- devices and SVIDs ---------------------------------------------------------------------------------
    def record_enrollment(self, device: DeviceRecord, svid: SvidRecord, event: AuditEvent) -> None:
        def record(db: psycopg.Connection[Any]) -> None:
            with db.transaction():
                holder = db.execute(
                    "SELECT ek_fingerprint FROM devices WHERE spiffe_id = %s FOR UPDATE", (device.spiffe_id,)
                ).fetchone()
                if holder is not None and holder[0] != device.ek_fingerprint:
                    raise StoreConflictError(
                        f"{device.spiffe_id} is already held by another TPM (EK {holder[0][:16]}…); "
                        "revoke that device first, or enroll under another name"
                    )
                db.execute(
                    "INSERT INTO devices VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (ek_fingerprint) DO UPDATE SET "
                    "spiffe_id = excluded.spiffe_id, device_class = excluded.device_class, claims = excluded.claims, "
                    "ak_name = excluded.ak_name, enrolled_at = excluded.enrolled_at, status = excluded.status",
                    (
                        device.ek_fingerprint,
                        device.spiffe_id,
                        device.device_class,
                        json.dumps(device.claims),
                        device.ak_name,
                        device.enrolled_at,
                        device.status,
                    ),
                )
                db.execute(
                    "INSERT INTO svids VALUES (%s,%s,%s,%s,%s,%s)",
                    (svid.serial, svid.spiffe_id, svid.ek_fingerprint, svid.not_before, svid.not_after, svid.kind),
                )
                _insert_audit(db, event)

        try:
            self._run(record)
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "devices_spiffe_id_key":  # another replica bound it a moment before
                raise StoreConflictError(
                    f"{device.spiffe_id} is already held by another TPM (enrolled at the same moment); "
                    "revoke that device first, or enroll under another name"
                ) from exc
            raise StoreConflictError(f"enrollment conflicts with stored state: {_safe(exc)}") from exc
        except pg_errors.IntegrityError as exc:
            raise StoreConflictError(f"enrollment conflicts with stored state: {_safe(exc)}") from exc

    def record_svid(self, svid: SvidRecord, event: AuditEvent) -> None:
        def record(db: psycopg.Connection[Any]) -> None:
            with db.transaction():
                db.execute(
                    "INSERT INTO svids VALUES (%s,%s,%s,%s,%s,%s)",
                    (svid.serial, svid.spiffe_id, svid.ek_fingerprint, svid.not_before, svid.not_after, svid.kind),
                )
                _insert_audit(db, event)

        try:
            self._run(record)
        except pg_errors.IntegrityError as exc:
            raise StoreConflictError(f"SVID serial {svid.serial} is recorded already") from exc

    def device(self, ek_fingerprint: str) -> DeviceRecord | None:
        row = self._one("SELECT * FROM devices WHERE ek_fingerprint = %s", (ek_fingerprint,))
        return None if row is None else device_record(row)

    def device_by_spiffe_id(self, spiffe_id: str) -> DeviceRecord | None:
        row = self._one("SELECT * FROM devices WHERE spiffe_id = %s", (spiffe_id,))
        return None if row is None else device_record(row)

    def devices(self) -> Sequence[DeviceRecord]:
        return [device_record(r) for r in self._all("SELECT * FROM devices ORDER BY spiffe_id", ())]

    def svids(self, spiffe_id: str) -> Sequence[SvidRecord]:
        rows = self._all("SELECT * FROM svids WHERE spiffe_id = %s ORDER BY not_before", (spiffe_id,))
        return [SvidRecord(*r) for r in rows]

    # -- revocations ---------------------------------------------------------------------------------------
    def revoke(self, revocation: RevocationRecord, event: AuditEvent) -> RevocationRecord:
        def revoke(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
            with db.transaction():
                inserted = db.execute(
                    "INSERT INTO revocations (spiffe_id, ek_fingerprint, reason, revoked_by, revoked_at) "
                    "VALUES (%s,%s,%s,%s,%s) ON CONFLICT (spiffe_id) DO NOTHING RETURNING sequence",
                    (
                        revocation.spiffe_id,
                        revocation.ek_fingerprint,
                        revocation.reason,
                        revocation.revoked_by,
                        revocation.revoked_at,
                    ),
                ).fetchone()
                if inserted is not None:
                    if revocation.ek_fingerprint:
                        db.execute(
                            "UPDATE devices SET status = 'revoked' WHERE ek_fingerprint = %s",
                            (revocation.ek_fingerprint,),
                        )
                    _insert_audit(db, event)
                row = db.execute(REVOCATION_SELECT + " WHERE spiffe_id = %s", (revocation.spiffe_id,)).fetchone()
                assert row is not None  # inserted or already there, in this transaction
                return tuple(row)

        return revocation_record(self._run(revoke))

    def revocations(self) -> Sequence[RevocationRecord]:
        return [revocation_record(r) for r in self._all(REVOCATION_SELECT + " ORDER BY sequence", ())]

    def revocation_counter(self) -> int:
        row = self._one("SELECT COALESCE(MAX(sequence), 0) FROM revocations", ())
        return int(row[0]) if row else 0

    def revocation(self, spiffe_id: str) -> RevocationRecord | None:
        row = self._one(REVOCATION_SELECT + " WHERE spiffe_id = %s", (spiffe_id,))
        return None if row is None else revocation_record(row)

    # -- registration entries ------------------------------------------------------------------------------
    def put_entry(self, entry: EntryRecord) -> None:
        try:
            self._run(
                lambda db: db.execute(
                    "INSERT INTO entries VALUES (%s,%s,%s,%s,%s,%s)",
                    (
                        entry.id,
                        entry.spiffe_id,
                        entry.parent_id,
                        selectors_column(entry),
                        entry.ttl_s,
                        entry.created_at,
                    ),
                )
            )
        except pg_errors.IntegrityError as exc:
            raise StoreConflictError(f"an entry for {entry.spiffe_id} with these selectors exists already") from exc

    def delete_entry(self, entry_id: str) -> bool:
        return self._run(lambda db: db.execute("DELETE FROM entries WHERE id = %s", (entry_id,)).rowcount > 0)

    def entries(self, *, parent_id: str | None = None) -> Sequence[EntryRecord]:
        if parent_id is None:
            rows = self._all("SELECT * FROM entries ORDER BY spiffe_id, id", ())
        else:
            rows = self._all("SELECT * FROM entries WHERE parent_id = %s ORDER BY spiffe_id, id", (parent_id,))
        return [entry_record(r) for r in rows]

    # -- audit ---------------------------------------------------------------------------------------------
    def audit(self, event: AuditEvent) -> int:
        return self._run(lambda db: _insert_audit(db, event))

    def add_to_audit_count(self, audit_id: int, more: int) -> None:
        self._run(lambda db: db.execute("UPDATE audit SET count = count + %s WHERE id = %s", (more, audit_id)))

    def audit_events(self, *, limit: int = 100) -> Sequence[AuditEvent]:
        return [audit_event(r) for r in self._all(AUDIT_SELECT + " ORDER BY id DESC LIMIT %s", (limit,))]

    # -- plumbing ------------------------------------------------------------------------------------------
    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        row = self._run(lambda db: db.execute(sql, args).fetchone())
        return None if row is None else tuple(row)

    def _all(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._run(lambda db: db.execute(sql, args).fetchall())]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _insert_audit(db: psycopg.Connection[Any], event: AuditEvent) -> int:
    row = db.execute(
        "INSERT INTO audit (at, event, outcome, subject, detail, count) VALUES (%s,%s,%s,%s,%s,%s) RETURNING id",
        (event.at, event.event, event.outcome, event.subject, json.dumps(event.detail), event.count),
    ).fetchone()
    return int(row[0]) if row else 0


def _safe(exc: Exception) -> str:
    """The error's first line: libpq names the host, port and user, never the password."""
    return str(exc).strip().split("\n", 1)[0]
