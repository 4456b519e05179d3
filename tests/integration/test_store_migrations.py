"""A database created by the trustd that shipped before the store had one schema for both backends opens,
migrates and serves with this code, on SQLite and on a real PostgreSQL.

`SQLITE_V4` and `POSTGRES_V4` are the migration lists as each backend's module held them (schema version 4,
issue 12's `purpose` and `count` columns), frozen here on purpose: they are what existing databases were
made with, whatever `trustd.server.store.schema` becomes. Rows are written as that code wrote them (INSERTs by
position), and read back through the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from localpeers.postgres import PostgresServer, running_postgres
from localpeers.tlsca import TestCA
from trustd.server.store import (
    AuditEvent,
    ChallengeRecord,
    DeviceRecord,
    RevocationRecord,
    Store,
    SvidRecord,
    open_store,
)
from trustd.server.store.schema import MIGRATIONS, POSTGRESQL, SQLITE, migration

pytestmark = pytest.mark.integration

SQLITE_V4: tuple[str, ...] = (
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


POSTGRES_V4: tuple[str, ...] = (
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


NODE = "spiffe://edge.example/site/lab/node/gw-01"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


def _statements(scripts: tuple[str, ...]) -> list[str]:
    return [s for script in scripts for s in script.split(";") if s.strip()]


def _old_rows(version: int) -> list[tuple[str, tuple[object, ...]]]:
    """What the old code stored, as it stored it (`?` placeholders; positional INSERTs)."""
    written: list[tuple[str, tuple[object, ...]]] = [
        (
            "INSERT INTO devices VALUES (?,?,?,?,?,?,?)",
            ("ek1", NODE, "edge-gateway", '{"site": "lab"}', "000b", 100.0, "enrolled"),
        ),
        ("INSERT INTO svids VALUES (?,?,?,?,?,?)", ("01", NODE, "ek1", 100.0, 200.0, "x509")),
        (
            "INSERT INTO revocations (spiffe_id, ek_fingerprint, reason, revoked_by, revoked_at) VALUES (?,?,?,?,?)",
            ("spiffe://edge.example/w/old", "", "gone", "op", 101.0),
        ),
        (
            "INSERT INTO entries VALUES (?,?,?,?,?,?)",
            ("e1", "spiffe://edge.example/w/web", NODE, '["unix:uid:1"]', 300, 1.0),
        ),
    ]
    challenge = ("c1", "ek1", b"ak", b"n" * 32, b"d" * 32, "{}", 100.0, 160.0, None)
    if version >= 4:
        written += [
            ("INSERT INTO challenges VALUES (?,?,?,?,?,?,?,?,?,?)", (*challenge, "renew")),
            (
                "INSERT INTO audit (at, event, outcome, subject, detail, count) VALUES (?,?,?,?,?,?)",
                (100.0, "enroll.complete", "enrolled", NODE, "{}", 3),
            ),
        ]
    else:  # before migration 4: no purpose, no count
        written += [
            ("INSERT INTO challenges VALUES (?,?,?,?,?,?,?,?,?)", challenge),
            (
                "INSERT INTO audit (at, event, outcome, subject, detail) VALUES (?,?,?,?,?)",
                (100.0, "enroll.complete", "enrolled", NODE, "{}"),
            ),
        ]
    return written


def _old_sqlite(path: Path, version: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    for statement in _statements(SQLITE_V4[:version]):
        db.execute(statement)
    db.execute(f"PRAGMA user_version={version}")
    for sql, args in _old_rows(version):
        db.execute(sql, args)
    db.close()


def _old_postgres(url: str, version: int) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        for statement in _statements(POSTGRES_V4[:version]):
            db.execute(statement)
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        for sql, args in _old_rows(version):
            db.execute(sql.replace("?", "%s"), args)


def _sqlite_schema(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        found = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        db.close()
    return [(kind, name, table, " ".join(str(sql).split())) for kind, name, table, sql in found]


def _postgres_schema(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as db:
        columns = db.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, column_name"
        ).fetchall()
        indexes = db.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        ).fetchall()
    return [*columns, *indexes]


def _serves_what_the_old_code_stored(store: Store, *, version: int) -> None:
    assert store.schema_version == len(MIGRATIONS) == 7  # type: ignore[attr-defined]
    assert store.rollouts() == []  # migration 7: the policy distribution tables, empty
    assert store.device("ek1") == DeviceRecord("ek1", NODE, "edge-gateway", {"site": "lab"}, "000b", 100.0)
    assert store.svids(NODE) == [SvidRecord("01", NODE, "ek1", 100.0, 200.0)]
    (old,) = store.revocations()
    assert (old.spiffe_id, old.reason, old.sequence) == ("spiffe://edge.example/w/old", "gone", 1)
    assert [e.selectors for e in store.entries(parent_id=NODE)] == [("unix:uid:1",)]
    (event,) = store.audit_events()
    assert (event.event, event.count) == ("enroll.complete", 3 if version >= 4 else 1)
    challenge = store.consume_challenge("c1", now=120.0)
    assert challenge.purpose == ("renew" if version >= 4 else "enroll")
    # and it goes on: new rows beside the old ones, the sequence and audit ids continuing
    store.put_challenge(ChallengeRecord("c2", "ek1", b"ak", b"n", b"d", {}, 130.0, 190.0), keep_per_ek=4)
    assert store.consume_challenge("c2", now=131.0).id == "c2"
    newer = store.revoke(
        RevocationRecord("spiffe://edge.example/w/new", "", "", "op", 140.0),
        AuditEvent(140.0, "fleet.revoke", "revoked", "spiffe://edge.example/w/new"),
    )
    assert newer.sequence == store.revocation_counter() == 2
    row = store.audit(AuditEvent(150.0, "enroll.challenge", "refused", "x"))
    store.add_to_audit_count(row, 4)
    (latest,) = store.audit_events(limit=1)
    assert (latest.event, latest.count) == ("enroll.challenge", 5)


def test_the_frozen_lists_are_what_the_one_schema_renders() -> None:
    for number in range(1, len(SQLITE_V4) + 1):  # the ones frozen here; later ones are new, not rewritten
        assert migration(number, SQLITE) == _statements(SQLITE_V4[number - 1 : number])
        assert migration(number, POSTGRESQL) == _statements(POSTGRES_V4[number - 1 : number])


@pytest.mark.parametrize("version", [3, 4])
def test_an_existing_sqlite_database_opens_and_migrates(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    _old_sqlite(path, version)
    store = open_store(f"sqlite:///{path}")
    try:
        _serves_what_the_old_code_stored(store, version=version)
    finally:
        store.close()
    fresh = tmp_path / "fresh.db"
    open_store(f"sqlite:///{fresh}").close()
    assert _sqlite_schema(path) == _sqlite_schema(fresh)


@pytest.mark.parametrize("version", [3, 4])
def test_an_existing_postgresql_database_opens_and_migrates(postgres: PostgresServer, version: int) -> None:
    url = postgres.new_database()
    _old_postgres(url, version)
    store = open_store(url)
    try:
        _serves_what_the_old_code_stored(store, version=version)
    finally:
        store.close()
    fresh = postgres.new_database()
    open_store(fresh).close()
    assert _postgres_schema(url) == _postgres_schema(fresh)
