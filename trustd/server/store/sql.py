"""Every `Store` operation, written once over SQL both backends speak; a backend supplies only a driver.

`SqlStore` holds the statements and the logic (what is one transaction, what a conflict means, why a challenge
is refused); a subclass supplies how to run work in a transaction or as one statement (`_transaction`,
`_read`), how it keeps the schema version, and its `Dialect`. Each guarantee is made by the database, not by a
lock in this process, so it holds as well for several trustd replicas on one PostgreSQL as for one SQLite file:
a challenge is consumed by one conditional UPDATE (of two racing answers exactly one gets the row), a SPIFFE ID
is bound to one EK by a unique constraint, the revocation counter is a serial key, and a revocation repeated
is one `ON CONFLICT DO NOTHING`.

Drivers convert their own errors at the boundary: a constraint violated becomes `IntegrityViolation` (which the
operation turns into its `StoreConflictError`), an outage becomes `StoreError` (503, retry).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from trustd.errors import ChallengeError, StoreConflictError
from trustd.server.store import rows
from trustd.server.store.base import (
    POLICY_CHANNEL,
    REVOCATIONS_CHANNEL,
    AuditEvent,
    ChallengeRecord,
    ClusterStatusRecord,
    DeviceRecord,
    EntryRecord,
    RevocationRecord,
    RolloutRecord,
    SvidRecord,
)
from trustd.server.store.rows import Row
from trustd.server.store.schema import MIGRATIONS, Dialect, migration

T = TypeVar("T")

# -- statements (`?` placeholders; `Dialect.render` gives each backend's) -------------------------------------
# Built from the column lists of `rows` (constants of this package, never input): every value is a parameter.
# ruff: noqa: S608
TRIM_CHALLENGES = (
    # the EK's expired challenges of this purpose, and all but its newest `keep` - 1
    "DELETE FROM challenges WHERE ek_fingerprint = ? AND purpose = ? AND (expires_at < ? OR id NOT IN "
    "(SELECT id FROM challenges WHERE ek_fingerprint = ? AND purpose = ? ORDER BY created_at DESC, id LIMIT ?))"
)
INSERT_CHALLENGE = f"INSERT INTO challenges ({rows.CHALLENGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
CONSUME_CHALLENGE = (
    f"UPDATE challenges SET used_at = ? WHERE id = ? AND used_at IS NULL RETURNING {rows.CHALLENGE_COLUMNS}"
)
CHALLENGE_ISSUED = "SELECT id FROM challenges WHERE id = ?"
PURGE_CHALLENGES = "DELETE FROM challenges WHERE expires_at < ?"

NAME_HOLDER = "SELECT ek_fingerprint FROM devices WHERE spiffe_id = ?"  # + Dialect.lock_rows
UPSERT_DEVICE = (
    f"INSERT INTO devices ({rows.DEVICE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (ek_fingerprint) DO UPDATE SET "
    "spiffe_id = excluded.spiffe_id, device_class = excluded.device_class, claims = excluded.claims, "
    "ak_name = excluded.ak_name, enrolled_at = excluded.enrolled_at, status = excluded.status, "
    "attested_at = excluded.attested_at"
)
DEVICE_BY_EK = f"SELECT {rows.DEVICE_COLUMNS} FROM devices WHERE ek_fingerprint = ?"
DEVICE_BY_SPIFFE_ID = f"SELECT {rows.DEVICE_COLUMNS} FROM devices WHERE spiffe_id = ?"
DEVICES = f"SELECT {rows.DEVICE_COLUMNS} FROM devices ORDER BY spiffe_id"
INSERT_SVID = f"INSERT INTO svids ({rows.SVID_COLUMNS}) VALUES (?,?,?,?,?,?)"
MARK_ATTESTED = "UPDATE devices SET attested_at = ? WHERE spiffe_id = ? AND attested_at < ?"
SVIDS_OF = f"SELECT {rows.SVID_COLUMNS} FROM svids WHERE spiffe_id = ? ORDER BY not_before"

INSERT_REVOCATION = (
    f"INSERT INTO revocations ({rows.REVOCATION_COLUMNS}) VALUES (?,?,?,?,?) "
    "ON CONFLICT (spiffe_id) DO NOTHING RETURNING sequence"
)
MARK_REVOKED = "UPDATE devices SET status = 'revoked' WHERE ek_fingerprint = ?"
REVOCATION_OF = f"SELECT {rows.REVOCATION_COLUMNS}, sequence FROM revocations WHERE spiffe_id = ?"
REVOCATIONS = f"SELECT {rows.REVOCATION_COLUMNS}, sequence FROM revocations ORDER BY sequence"
REVOCATION_COUNTER = "SELECT COALESCE(MAX(sequence), 0) AS counter FROM revocations"

INSERT_ENTRY = f"INSERT INTO entries ({rows.ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?)"
DELETE_ENTRY = "DELETE FROM entries WHERE id = ?"
ENTRIES = f"SELECT {rows.ENTRY_COLUMNS} FROM entries ORDER BY spiffe_id, id"
ENTRIES_OF = f"SELECT {rows.ENTRY_COLUMNS} FROM entries WHERE parent_id = ? ORDER BY spiffe_id, id"

UPSERT_CLUSTER_STATUS = (
    f"INSERT INTO cluster_status ({rows.CLUSTER_STATUS_COLUMNS}) VALUES (?,?,?,?) ON CONFLICT (cluster, member) "
    "DO UPDATE SET report = excluded.report, received = excluded.received"
)
DELETE_CLUSTER_STATUS = "DELETE FROM cluster_status WHERE cluster = ? AND member = ?"
CLUSTER_STATUSES = f"SELECT {rows.CLUSTER_STATUS_COLUMNS} FROM cluster_status ORDER BY cluster, member"
CLUSTER_STATUSES_SINCE = (
    f"SELECT {rows.CLUSTER_STATUS_COLUMNS} FROM cluster_status WHERE received >= ? ORDER BY cluster, member"
)

ROLLOUT_OF = f"SELECT {rows.ROLLOUT_COLUMNS} FROM rollouts WHERE group_name = ?"  # + Dialect.lock_rows
ROLLOUTS = f"SELECT {rows.ROLLOUT_COLUMNS} FROM rollouts ORDER BY group_name"
ROLLOUT_VERSIONS = "SELECT group_name, version FROM rollouts"
UPSERT_ROLLOUT = (
    f"INSERT INTO rollouts ({rows.ROLLOUT_COLUMNS}) VALUES (?,?,?,?) ON CONFLICT (group_name) DO UPDATE SET "
    "counter = excluded.counter, state = excluded.state, version = excluded.version"
)
UPDATE_ROLLOUT = "UPDATE rollouts SET state = ?, version = ? WHERE group_name = ? AND counter = ?"
INSERT_BUNDLE = "INSERT INTO policy_bundles (group_name, counter, blob, published_at) VALUES (?,?,?,?)"
KEEP_BUNDLE = (
    "INSERT INTO policy_bundles (group_name, counter, blob, published_at) VALUES (?,?,?,?) "
    "ON CONFLICT (group_name, counter) DO NOTHING"
)
BUNDLE_OF = "SELECT blob FROM policy_bundles WHERE group_name = ? AND counter = ?"

INSERT_AUDIT = f"INSERT INTO audit ({rows.AUDIT_COLUMNS}) VALUES (?,?,?,?,?,?) RETURNING id"
ADD_TO_AUDIT_COUNT = "UPDATE audit SET count = count + ? WHERE id = ?"
AUDIT_EVENTS = f"SELECT {rows.AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?"


class IntegrityViolation(Exception):  # noqa: N818 - a driver's signal to `SqlStore`, never seen outside it
    """A unique or other constraint refused a write (a driver's IntegrityError, its message first line)."""


class Tx(Protocol):
    """Statements on one connection, inside a transaction or not (a driver's thin wrapper)."""

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        """Run `sql` and return every row it yields, by column name."""
        ...

    def run(self, sql: str, args: Sequence[object] = ()) -> int:
        """Run `sql`; how many rows it changed."""
        ...


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...


class _Connection(Protocol):
    def execute(self, sql: str, args: Sequence[Any], /) -> _Cursor: ...


class Statements:
    """`Tx` over a DB-API connection whose rows are read by name (sqlite3's and psycopg's alike)."""

    __slots__ = ("_db",)

    def __init__(self, db: _Connection) -> None:
        self._db = db

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        # fetchall, always: a statement left half-read (RETURNING) would keep SQLite's write lock
        rows: list[Row] = self._db.execute(sql, args).fetchall()
        return rows

    def run(self, sql: str, args: Sequence[object] = ()) -> int:
        return self._db.execute(sql, args).rowcount


class SqlStore(ABC):
    #: True when a call may wait on another machine: async code calls it through `trustd.server.store.off_loop`
    blocking: ClassVar[bool] = False
    #: True when other replicas may write the same database (see `Store.shared`)
    shared: ClassVar[bool] = False
    dialect: ClassVar[Dialect]

    # -- what a backend supplies -------------------------------------------------------------------------
    @abstractmethod
    def _transaction(self, work: Callable[[Tx], T]) -> T:
        """`work` in one transaction, all or nothing (IntegrityViolation, StoreError as above)."""

    @abstractmethod
    def _read(self, work: Callable[[Tx], T]) -> T:
        """`work` outside a transaction: single statements, each atomic by itself."""

    @abstractmethod
    def _lock_schema(self, tx: Tx) -> None:
        """Inside the migration's transaction, first: make other processes that migrate wait for this one."""

    @abstractmethod
    def _schema_version(self, tx: Tx) -> int:
        """The schema version the database is at (0 for a new one)."""

    @abstractmethod
    def _set_schema_version(self, tx: Tx, version: int) -> None:
        """Inside the migration's transaction, last: record the version reached."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _notify(self, tx: Tx, channel: str) -> None:
        """Inside a write's transaction: tell `subscribe`rs of `channel` (on every replica) once it commits."""

    def subscribe(self, channel: str, listener: Callable[[], None]) -> Callable[[], None]:
        """None across processes here (a backend that has it overrides this): what ends it does nothing."""
        return _nothing

    # -- schema --------------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Bring the schema up to date, in one transaction: a failed migration leaves the version it found."""

        def migrate(tx: Tx) -> None:
            self._lock_schema(tx)
            version = self._schema_version(tx)
            for number in range(version + 1, len(MIGRATIONS) + 1):
                for statement in migration(number, self.dialect):
                    tx.run(statement)
            if version < len(MIGRATIONS):
                self._set_schema_version(tx, len(MIGRATIONS))

        self._transaction(migrate)

    @property
    def schema_version(self) -> int:
        return self._read(self._schema_version)

    # -- challenges ----------------------------------------------------------------------------------------
    def put_challenge(self, challenge: ChallengeRecord, *, keep_per_ek: int = 0) -> None:
        def put(tx: Tx) -> None:
            if keep_per_ek > 0:
                tx.run(
                    self._sql(TRIM_CHALLENGES),
                    (
                        challenge.ek_fingerprint,
                        challenge.purpose,
                        challenge.created_at,
                        challenge.ek_fingerprint,
                        challenge.purpose,
                        keep_per_ek - 1,
                    ),
                )
            tx.run(self._sql(INSERT_CHALLENGE), rows.challenge_values(challenge))

        self._transaction(put)

    def consume_challenge(self, challenge_id: str, *, now: float) -> ChallengeRecord:
        # one statement: of two answers (two replicas) racing for the same challenge, exactly one gets the row
        taken = self._transaction(lambda tx: tx.rows(self._sql(CONSUME_CHALLENGE), (now, challenge_id)))
        if not taken:
            if not self._all(CHALLENGE_ISSUED, (challenge_id,)):
                raise ChallengeError(
                    "unknown challenge: it was never issued, or it expired and was purged; start enrollment again"
                )
            raise ChallengeError("this challenge was already answered once (a replayed nonce); start enrollment again")
        record = rows.challenge_record(taken[0])
        if now > record.expires_at:  # a late answer burns the challenge all the same
            raise ChallengeError(
                f"the challenge expired {now - record.expires_at:.0f}s ago (it is valid for "
                f"{record.expires_at - record.created_at:.0f}s); start enrollment again"
            )
        return record

    def purge_challenges(self, *, now: float) -> int:
        return self._transaction(lambda tx: tx.run(self._sql(PURGE_CHALLENGES), (now,)))

    # -- devices and SVIDs ---------------------------------------------------------------------------------
    def record_enrollment(self, device: DeviceRecord, svid: SvidRecord, event: AuditEvent) -> None:
        holder_sql = self._sql(NAME_HOLDER) + self.dialect.lock_rows

        def record(tx: Tx) -> None:
            holder = tx.rows(holder_sql, (device.spiffe_id,))
            if holder and holder[0]["ek_fingerprint"] != device.ek_fingerprint:
                raise _held_by(device.spiffe_id, str(holder[0]["ek_fingerprint"]))
            tx.run(self._sql(UPSERT_DEVICE), rows.device_values(device))
            tx.run(self._sql(INSERT_SVID), rows.svid_values(svid))
            self._insert_audit(tx, event)

        try:
            self._transaction(record)
        except IntegrityViolation as exc:
            holder = self.device_by_spiffe_id(device.spiffe_id)
            if holder is not None and holder.ek_fingerprint != device.ek_fingerprint:
                # another replica bound the name between our look and our write: the unique constraint refused it
                raise _held_by(device.spiffe_id, holder.ek_fingerprint) from exc
            raise StoreConflictError(f"enrollment conflicts with stored state: {exc}") from exc

    def record_svid(self, svid: SvidRecord, event: AuditEvent, *, attested_at: float | None = None) -> None:
        def record(tx: Tx) -> None:
            tx.run(self._sql(INSERT_SVID), rows.svid_values(svid))
            if attested_at is not None:  # only moves forward: two replicas' renewals never set it back
                tx.run(self._sql(MARK_ATTESTED), (attested_at, svid.spiffe_id, attested_at))
            self._insert_audit(tx, event)

        try:
            self._transaction(record)
        except IntegrityViolation as exc:
            raise StoreConflictError(f"SVID serial {svid.serial} is recorded already") from exc

    def device(self, ek_fingerprint: str) -> DeviceRecord | None:
        found = self._all(DEVICE_BY_EK, (ek_fingerprint,))
        return rows.device_record(found[0]) if found else None

    def device_by_spiffe_id(self, spiffe_id: str) -> DeviceRecord | None:
        found = self._all(DEVICE_BY_SPIFFE_ID, (spiffe_id,))
        return rows.device_record(found[0]) if found else None

    def devices(self) -> Sequence[DeviceRecord]:
        return [rows.device_record(r) for r in self._all(DEVICES)]

    def svids(self, spiffe_id: str) -> Sequence[SvidRecord]:
        return [rows.svid_record(r) for r in self._all(SVIDS_OF, (spiffe_id,))]

    # -- revocations ---------------------------------------------------------------------------------------
    def revoke(self, revocation: RevocationRecord, event: AuditEvent) -> RevocationRecord:
        def revoke(tx: Tx) -> Row:
            found = tx.rows(self._sql(REVOCATION_OF), (revocation.spiffe_id,))
            if found:  # revoked before: the first record stands (and the counter does not move)
                return found[0]
            # ON CONFLICT: another replica's revocation of the same subject committed since our look
            if tx.rows(self._sql(INSERT_REVOCATION), rows.revocation_values(revocation)):
                if revocation.ek_fingerprint:
                    tx.run(self._sql(MARK_REVOKED), (revocation.ek_fingerprint,))
                self._insert_audit(tx, event)
                self._notify(tx, REVOCATIONS_CHANNEL)
            (row,) = tx.rows(self._sql(REVOCATION_OF), (revocation.spiffe_id,))  # ours, or the other replica's
            return row

        return rows.revocation_record(self._transaction(revoke))

    def revocations(self) -> Sequence[RevocationRecord]:
        return [rows.revocation_record(r) for r in self._all(REVOCATIONS)]

    def revocation_counter(self) -> int:
        (row,) = self._all(REVOCATION_COUNTER)
        return int(row["counter"])

    def revocation(self, spiffe_id: str) -> RevocationRecord | None:
        found = self._all(REVOCATION_OF, (spiffe_id,))
        return rows.revocation_record(found[0]) if found else None

    # -- registration entries ------------------------------------------------------------------------------
    def put_entry(self, entry: EntryRecord) -> None:
        try:
            self._transaction(lambda tx: tx.run(self._sql(INSERT_ENTRY), rows.entry_values(entry)))
        except IntegrityViolation as exc:
            raise StoreConflictError(f"an entry for {entry.spiffe_id} with these selectors exists already") from exc

    def delete_entry(self, entry_id: str) -> bool:
        return self._transaction(lambda tx: tx.run(self._sql(DELETE_ENTRY), (entry_id,))) > 0

    def entries(self, *, parent_id: str | None = None) -> Sequence[EntryRecord]:
        found = self._all(ENTRIES) if parent_id is None else self._all(ENTRIES_OF, (parent_id,))
        return [rows.entry_record(r) for r in found]

    # -- cluster status ------------------------------------------------------------------------------------
    def put_cluster_status(self, record: ClusterStatusRecord) -> None:
        values = rows.cluster_status_values(record)
        self._transaction(lambda tx: tx.run(self._sql(UPSERT_CLUSTER_STATUS), values))

    def delete_cluster_status(self, cluster: str, member: str) -> None:
        self._transaction(lambda tx: tx.run(self._sql(DELETE_CLUSTER_STATUS), (cluster, member)))

    def cluster_statuses(self) -> Sequence[ClusterStatusRecord]:
        return [rows.cluster_status_record(r) for r in self._all(CLUSTER_STATUSES)]

    def cluster_statuses_since(self, received: float) -> Sequence[ClusterStatusRecord]:
        return [rows.cluster_status_record(r) for r in self._all(CLUSTER_STATUSES_SINCE, (received,))]

    # -- policy distribution -------------------------------------------------------------------------------
    def publish_bundle(self, group: str, counter: int, blob: bytes, state: dict[str, object], *, now: float) -> int:
        rollout_sql = self._sql(ROLLOUT_OF) + self.dialect.lock_rows

        def publish(tx: Tx) -> int:
            found = tx.rows(rollout_sql, (group,))
            version = 1
            if found:
                current = rows.rollout_record(found[0])
                if counter <= current.counter:
                    raise _not_newer(counter, current.counter)
                version = current.version + 1
            tx.run(self._sql(INSERT_BUNDLE), (group, counter, blob, now))
            tx.run(self._sql(UPSERT_ROLLOUT), (group, counter, json.dumps(state), version))
            self._notify(tx, POLICY_CHANNEL)
            return version

        try:
            return self._transaction(publish)
        except IntegrityViolation as exc:
            # a new group's first bundle, published through two replicas at once: the other one's committed first
            raise StoreConflictError(f"bundle {counter} of group {group!r} was published meanwhile") from exc

    def put_bundle(self, group: str, counter: int, blob: bytes, *, now: float) -> None:
        self._transaction(lambda tx: tx.run(self._sql(KEEP_BUNDLE), (group, counter, blob, now)))

    def bundle(self, group: str, counter: int) -> bytes | None:
        found = self._all(BUNDLE_OF, (group, counter))
        return bytes(found[0]["blob"]) if found else None

    def rollouts(self) -> Sequence[RolloutRecord]:
        return [rows.rollout_record(r) for r in self._all(ROLLOUTS)]

    def rollout_versions(self) -> dict[str, int]:
        return {str(r["group_name"]): int(r["version"]) for r in self._all(ROLLOUT_VERSIONS)}

    def update_rollout(
        self, group: str, counter: int, change: Callable[[dict[str, object]], dict[str, object]]
    ) -> RolloutRecord | None:
        rollout_sql = self._sql(ROLLOUT_OF) + self.dialect.lock_rows

        def update(tx: Tx) -> RolloutRecord | None:
            found = tx.rows(rollout_sql, (group,))
            if not found:
                return None
            current = rows.rollout_record(found[0])
            if current.counter != counter:
                return None
            state = change(current.state)
            tx.run(self._sql(UPDATE_ROLLOUT), (json.dumps(state), current.version + 1, group, counter))
            self._notify(tx, POLICY_CHANNEL)
            return RolloutRecord(group, counter, state, current.version + 1)

        return self._transaction(update)

    # -- audit ---------------------------------------------------------------------------------------------
    def audit(self, event: AuditEvent) -> int:
        return self._transaction(lambda tx: self._insert_audit(tx, event))

    def add_to_audit_count(self, audit_id: int, more: int) -> None:
        self._transaction(lambda tx: tx.run(self._sql(ADD_TO_AUDIT_COUNT), (more, audit_id)))

    def audit_events(self, *, limit: int = 100) -> Sequence[AuditEvent]:
        return [rows.audit_event(r) for r in self._all(AUDIT_EVENTS, (limit,))]

    def _insert_audit(self, tx: Tx, event: AuditEvent) -> int:
        (row,) = tx.rows(self._sql(INSERT_AUDIT), rows.audit_values(event))
        return int(row["id"])

    # -- plumbing ------------------------------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        """`statement` in this backend's placeholders (rendered once, then cached)."""
        rendered = _RENDERED.get((self.dialect.name, statement))
        if rendered is None:
            rendered = _RENDERED[(self.dialect.name, statement)] = self.dialect.render(statement)
        return rendered

    def _all(self, statement: str, args: Sequence[object] = ()) -> list[Row]:
        sql = self._sql(statement)
        return self._read(lambda tx: tx.rows(sql, args))


_RENDERED: dict[tuple[str, str], str] = {}


def _nothing() -> None:
    """What ends a subscription that never began."""


def _not_newer(counter: int, current: int) -> StoreConflictError:
    return StoreConflictError(f"bundle counter {counter} is not newer than {current}")


def _held_by(spiffe_id: str, ek_fingerprint: str) -> StoreConflictError:
    return StoreConflictError(
        f"{spiffe_id} is already held by another TPM (EK {ek_fingerprint[:16]}…); "
        "revoke that device first, or enroll under another name"
    )
