"""The store's schema, once for both backends: numbered migrations written over a few named dialect words.

SQLite and PostgreSQL agree on the SQL the store needs (including `ON CONFLICT`, `RETURNING`, `LIMIT`); they
differ in a handful of words, and those are the `Dialect`'s fields, each named for what it means, never a
rewrite of a statement. A migration is rendered per dialect to exactly the text each backend's own list held
before the two lists were one (tests/integration/test_store_migrations.py creates databases with that old text
and opens them with this code), so a database created by any earlier trustd opens and migrates.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends, word by word."""

    name: str
    #: the placeholder of a parameter: statements are written with `?` and rendered once per statement
    placeholder: str
    #: raw bytes
    blob: str
    #: an 8-byte float (timestamps in seconds)
    real: str
    #: a 64-bit counter (an aggregate audit row's count); SQLite's INTEGER is 64-bit already
    counter: str
    #: a 64-bit key numbered by the database, in insertion order, never reused (the revocation list's counter)
    serial_key: str
    #: what makes a read inside a transaction hold the rows it read until COMMIT. SQLite's write transactions
    #: (BEGIN IMMEDIATE) already exclude every other writer, so it needs no such words, and has none
    lock_rows: str

    def render(self, statement: str) -> str:
        """`statement` with this dialect's placeholders (no statement of the store holds a `?` or `%` else)."""
        if self.placeholder == "?":
            return statement
        if "%" in statement:
            raise ValueError(f"a store statement may not contain '%': {statement!r}")
        return statement.replace("?", self.placeholder)


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    blob="BLOB",
    real="REAL",
    counter="INTEGER",
    serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",
    lock_rows="",
)

POSTGRESQL = Dialect(
    name="postgresql",
    placeholder="%s",
    blob="BYTEA",
    real="DOUBLE PRECISION",
    counter="BIGINT",
    serial_key="BIGSERIAL PRIMARY KEY",
    lock_rows=" FOR UPDATE",
)

#: each entry moves the schema one version up; never edit one that has shipped, append a new one.
#: `{blob}`, `{real}`, `{counter}` and `{serial_key}` are the `Dialect`'s words.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE challenges (
        id TEXT PRIMARY KEY,
        ek_fingerprint TEXT NOT NULL,
        ak_public {blob} NOT NULL,
        nonce {blob} NOT NULL,
        secret_digest {blob} NOT NULL,
        claims TEXT NOT NULL,
        created_at {real} NOT NULL,
        expires_at {real} NOT NULL,
        used_at {real}
    );
    CREATE INDEX challenges_expiry ON challenges (expires_at);
    CREATE TABLE devices (
        ek_fingerprint TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL UNIQUE,
        device_class TEXT NOT NULL,
        claims TEXT NOT NULL,
        ak_name TEXT NOT NULL,
        enrolled_at {real} NOT NULL,
        status TEXT NOT NULL
    );
    CREATE TABLE svids (
        serial TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        ek_fingerprint TEXT NOT NULL,
        not_before {real} NOT NULL,
        not_after {real} NOT NULL,
        kind TEXT NOT NULL
    );
    CREATE INDEX svids_spiffe_id ON svids (spiffe_id);
    CREATE TABLE audit (
        id {serial_key},
        at {real} NOT NULL,
        event TEXT NOT NULL,
        outcome TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE revocations (
        sequence {serial_key},
        spiffe_id TEXT NOT NULL UNIQUE,
        ek_fingerprint TEXT NOT NULL,
        reason TEXT NOT NULL,
        revoked_by TEXT NOT NULL,
        revoked_at {real} NOT NULL
    );
    """,
    """
    CREATE TABLE entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        ttl_s INTEGER NOT NULL,
        created_at {real} NOT NULL,
        UNIQUE (spiffe_id, parent_id, selectors)
    );
    CREATE INDEX entries_parent ON entries (parent_id);
    """,
    """
    ALTER TABLE challenges ADD COLUMN purpose TEXT NOT NULL DEFAULT 'enroll';
    CREATE INDEX challenges_ek ON challenges (ek_fingerprint, purpose, created_at);
    ALTER TABLE audit ADD COLUMN count {counter} NOT NULL DEFAULT 1;
    """,
    # the time of a device's last quote-verified enrollment or renewal (0: before this column; the node then
    # counts as never attested until it renews), for the clusters' node attestation documents
    """
    ALTER TABLE devices ADD COLUMN attested_at {real} NOT NULL DEFAULT 0;
    """,
    # what each cluster's syncer and webhook replicas last reported (trustd/server/policy/clusterstatus.py)
    """
    CREATE TABLE cluster_status (
        cluster TEXT NOT NULL,
        member TEXT NOT NULL,
        report TEXT NOT NULL,
        received {real} NOT NULL,
        PRIMARY KEY (cluster, member)
    );
    """,
    # the hub's policy distribution state, shared by every replica (it lived in each trustd's data directory):
    # the signed bundles as published, and per cluster group its rollout (the state as JSON, the bundle's
    # counter for the "newer than the last one" check, and a version that moves with each write, which the
    # replicas compare to notice another's change); and the cluster status by time received, which replicas
    # read to learn the reports that reached another one
    """
    CREATE TABLE policy_bundles (
        group_name TEXT NOT NULL,
        counter {counter} NOT NULL,
        blob {blob} NOT NULL,
        published_at {real} NOT NULL,
        PRIMARY KEY (group_name, counter)
    );
    CREATE TABLE rollouts (
        group_name TEXT PRIMARY KEY,
        counter {counter} NOT NULL,
        state TEXT NOT NULL,
        version {counter} NOT NULL
    );
    CREATE INDEX cluster_status_received ON cluster_status (received);
    """,
)


def migration(number: int, dialect: Dialect) -> list[str]:
    """The statements of migration `number` (1-based) in `dialect`."""
    script = MIGRATIONS[number - 1].format(
        blob=dialect.blob, real=dialect.real, counter=dialect.counter, serial_key=dialect.serial_key
    )
    return [statement for statement in script.split(";") if statement.strip()]
