"""The embedded store: one SQLite file, WAL journal, schema migrations numbered in order.

One connection guarded by a lock: enrollment writes are tiny and SQLite serialises writers anyway, so a
pool would add nothing but lock contention inside SQLite.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustd.errors import ChallengeError, StoreConflictError, StoreError
from trustd.store.base import AuditEvent, ChallengeRecord, DeviceRecord, EntryRecord, RevocationRecord, SvidRecord
from trustd.store.rows import (
    AUDIT_SELECT,
    CHALLENGE_SELECT,
    REVOCATION_SELECT,
    audit_event,
    challenge_record,
    challenge_values,
    device_record,
    entry_record,
    revocation_record,
    selectors_column,
)

#: each entry moves the schema one version up; never edit one that has shipped, append a new one
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE challenges (
        id TEXT PRIMARY KEY,
        ek_fingerprint TEXT NOT NULL,
        ak_public BLOB NOT NULL,
        nonce BLOB NOT NULL,
        secret_digest BLOB NOT NULL,
        claims TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    CREATE INDEX challenges_expiry ON challenges (expires_at);
    CREATE TABLE devices (
        ek_fingerprint TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL UNIQUE,
        device_class TEXT NOT NULL,
        claims TEXT NOT NULL,
        ak_name TEXT NOT NULL,
        enrolled_at REAL NOT NULL,
        status TEXT NOT NULL
    );
    CREATE TABLE svids (
        serial TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        ek_fingerprint TEXT NOT NULL,
        not_before REAL NOT NULL,
        not_after REAL NOT NULL,
        kind TEXT NOT NULL
    );
    CREATE INDEX svids_spiffe_id ON svids (spiffe_id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        outcome TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE revocations (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        spiffe_id TEXT NOT NULL UNIQUE,
        ek_fingerprint TEXT NOT NULL,
        reason TEXT NOT NULL,
        revoked_by TEXT NOT NULL,
        revoked_at REAL NOT NULL
    );
    """,
    """
    CREATE TABLE entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        ttl_s INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (spiffe_id, parent_id, selectors)
    );
    CREATE INDEX entries_parent ON entries (parent_id);
    """,
    """
    ALTER TABLE challenges ADD COLUMN purpose TEXT NOT NULL DEFAULT 'enroll';
    CREATE INDEX challenges_ek ON challenges (ek_fingerprint, purpose, created_at);
    ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    """,
)


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    for statement in filter(str.strip, script.split(";")):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={number}")
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StoreError(f"store migration {number} failed: {exc}") from exc

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- challenges ----------------------------------------------------------------------------------------
    def put_challenge(self, challenge: ChallengeRecord, *, keep_per_ek: int = 0) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if keep_per_ek > 0:
                    self._db.execute(
                        "DELETE FROM challenges WHERE ek_fingerprint = ? AND purpose = ? AND (expires_at < ? OR id IN "
                        "(SELECT id FROM challenges WHERE ek_fingerprint = ? AND purpose = ? "
                        "ORDER BY created_at DESC, id LIMIT -1 OFFSET ?))",
                        (
                            challenge.ek_fingerprint,
                            challenge.purpose,
                            challenge.created_at,
                            challenge.ek_fingerprint,
                            challenge.purpose,
                            keep_per_ek - 1,
                        ),
                    )
                self._db.execute(
                    "INSERT INTO challenges (id, ek_fingerprint, ak_public, nonce, secret_digest, claims, "
                    "created_at, expires_at, used_at, purpose) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?)",
                    challenge_values(challenge),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def consume_challenge(self, challenge_id: str, *, now: float) -> ChallengeRecord:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(CHALLENGE_SELECT + " WHERE id = ?", (challenge_id,)).fetchone()
                if row is None:
                    raise ChallengeError(
                        "unknown challenge: it was never issued, or it expired and was purged; start enrollment again"
                    )
                record = challenge_record(row)
                if record.used_at is not None:
                    raise ChallengeError(
                        "this challenge was already answered once (a replayed nonce); start enrollment again"
                    )
                self._db.execute("UPDATE challenges SET used_at = ? WHERE id = ?", (now, challenge_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if now > record.expires_at:
            raise ChallengeError(
                f"the challenge expired {now - record.expires_at:.0f}s ago (it is valid for "
                f"{record.expires_at - record.created_at:.0f}s); start enrollment again"
            )
        return record

    def purge_challenges(self, *, now: float) -> int:
        with self._lock:
            cursor = self._db.execute("DELETE FROM challenges WHERE expires_at < ?", (now,))
            return cursor.rowcount

    # -- devices and SVIDs ---------------------------------------------------------------------------------
    def record_enrollment(self, device: DeviceRecord, svid: SvidRecord, event: AuditEvent) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                holder = self._db.execute(
                    "SELECT ek_fingerprint FROM devices WHERE spiffe_id = ?", (device.spiffe_id,)
                ).fetchone()
                if holder is not None and holder[0] != device.ek_fingerprint:
                    raise StoreConflictError(
                        f"{device.spiffe_id} is already held by another TPM (EK {holder[0][:16]}…); "
                        "revoke that device first, or enroll under another name"
                    )
                self._db.execute(
                    "INSERT INTO devices VALUES (?,?,?,?,?,?,?) ON CONFLICT (ek_fingerprint) DO UPDATE SET "
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
                self._db.execute(
                    "INSERT INTO svids VALUES (?,?,?,?,?,?)",
                    (
                        svid.serial,
                        svid.spiffe_id,
                        svid.ek_fingerprint,
                        svid.not_before,
                        svid.not_after,
                        svid.kind,
                    ),
                )
                self._insert_audit(event)
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise StoreConflictError(f"enrollment conflicts with stored state: {exc}") from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_svid(self, svid: SvidRecord, event: AuditEvent) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO svids VALUES (?,?,?,?,?,?)",
                    (svid.serial, svid.spiffe_id, svid.ek_fingerprint, svid.not_before, svid.not_after, svid.kind),
                )
                self._insert_audit(event)
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                raise StoreConflictError(f"SVID serial {svid.serial} is recorded already") from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def device(self, ek_fingerprint: str) -> DeviceRecord | None:
        row = self._one("SELECT * FROM devices WHERE ek_fingerprint = ?", (ek_fingerprint,))
        return None if row is None else device_record(row)

    def device_by_spiffe_id(self, spiffe_id: str) -> DeviceRecord | None:
        row = self._one("SELECT * FROM devices WHERE spiffe_id = ?", (spiffe_id,))
        return None if row is None else device_record(row)

    def devices(self) -> Sequence[DeviceRecord]:
        return [device_record(r) for r in self._all("SELECT * FROM devices ORDER BY spiffe_id", ())]

    def svids(self, spiffe_id: str) -> Sequence[SvidRecord]:
        rows = self._all("SELECT * FROM svids WHERE spiffe_id = ? ORDER BY not_before", (spiffe_id,))
        return [SvidRecord(*r) for r in rows]

    # -- revocations ---------------------------------------------------------------------------------------
    def revoke(self, revocation: RevocationRecord, event: AuditEvent) -> RevocationRecord:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(REVOCATION_SELECT + " WHERE spiffe_id = ?", (revocation.spiffe_id,)).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO revocations (spiffe_id, ek_fingerprint, reason, revoked_by, revoked_at) "
                        "VALUES (?,?,?,?,?)",
                        (
                            revocation.spiffe_id,
                            revocation.ek_fingerprint,
                            revocation.reason,
                            revocation.revoked_by,
                            revocation.revoked_at,
                        ),
                    )
                    if revocation.ek_fingerprint:
                        self._db.execute(
                            "UPDATE devices SET status = 'revoked' WHERE ek_fingerprint = ?",
                            (revocation.ek_fingerprint,),
                        )
                    self._insert_audit(event)
                    row = self._db.execute(
                        REVOCATION_SELECT + " WHERE spiffe_id = ?", (revocation.spiffe_id,)
                    ).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return revocation_record(row)

    def revocations(self) -> Sequence[RevocationRecord]:
        return [revocation_record(r) for r in self._all(REVOCATION_SELECT + " ORDER BY sequence", ())]

    def revocation_counter(self) -> int:
        row = self._one("SELECT COALESCE(MAX(sequence), 0) FROM revocations", ())
        return int(row[0]) if row else 0

    def revocation(self, spiffe_id: str) -> RevocationRecord | None:
        row = self._one(REVOCATION_SELECT + " WHERE spiffe_id = ?", (spiffe_id,))
        return None if row is None else revocation_record(row)

    # -- registration entries ------------------------------------------------------------------------------
    def put_entry(self, entry: EntryRecord) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO entries VALUES (?,?,?,?,?,?)",
                    (
                        entry.id,
                        entry.spiffe_id,
                        entry.parent_id,
                        selectors_column(entry),
                        entry.ttl_s,
                        entry.created_at,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise StoreConflictError(f"an entry for {entry.spiffe_id} with these selectors exists already") from exc

    def delete_entry(self, entry_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,)).rowcount > 0

    def entries(self, *, parent_id: str | None = None) -> Sequence[EntryRecord]:
        if parent_id is None:
            rows = self._all("SELECT * FROM entries ORDER BY spiffe_id, id", ())
        else:
            rows = self._all("SELECT * FROM entries WHERE parent_id = ? ORDER BY spiffe_id, id", (parent_id,))
        return [entry_record(r) for r in rows]

    # -- audit ---------------------------------------------------------------------------------------------
    def audit(self, event: AuditEvent) -> int:
        with self._lock:
            return self._insert_audit(event)

    def add_to_audit_count(self, audit_id: int, more: int) -> None:
        with self._lock:
            self._db.execute("UPDATE audit SET count = count + ? WHERE id = ?", (more, audit_id))

    def audit_events(self, *, limit: int = 100) -> Sequence[AuditEvent]:
        return [audit_event(r) for r in self._all(AUDIT_SELECT + " ORDER BY id DESC LIMIT ?", (limit,))]

    def _insert_audit(self, event: AuditEvent) -> int:
        cursor = self._db.execute(
            "INSERT INTO audit (at, event, outcome, subject, detail, count) VALUES (?,?,?,?,?,?)",
            (event.at, event.event, event.outcome, event.subject, json.dumps(event.detail), event.count),
        )
        return int(cursor.lastrowid or 0)

    # -- plumbing ------------------------------------------------------------------------------------------
    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
