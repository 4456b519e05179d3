"""Rows to records and back, the same for every backend: one place decides how a record is stored.

Every SELECT names its columns (`*_COLUMNS`) and a row is read by column name, never by position: a later
migration that adds a column (as migration 4 did) cannot shift what a reader takes for what. Values for an
INSERT come in the order of the same column list.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from trustd.server.store.base import (
    AuditEvent,
    ChallengeRecord,
    ClusterStatusRecord,
    DeviceRecord,
    EntryRecord,
    RevocationRecord,
    RolloutRecord,
    SvidRecord,
)


class Row(Protocol):
    """A row read by column name: `sqlite3.Row`, or the `dict` of psycopg's `dict_row`."""

    def __getitem__(self, column: str, /) -> Any: ...


CHALLENGE_COLUMNS = (
    "id, ek_fingerprint, ak_public, nonce, secret_digest, claims, created_at, expires_at, used_at, purpose"
)
DEVICE_COLUMNS = "ek_fingerprint, spiffe_id, device_class, claims, ak_name, enrolled_at, status, attested_at"
SVID_COLUMNS = "serial, spiffe_id, ek_fingerprint, not_before, not_after, kind"
#: `sequence` is the database's (a serial key): an INSERT leaves it out
REVOCATION_COLUMNS = "spiffe_id, ek_fingerprint, reason, revoked_by, revoked_at"
ENTRY_COLUMNS = "id, spiffe_id, parent_id, selectors, ttl_s, created_at"
AUDIT_COLUMNS = "at, event, outcome, subject, detail, count"
CLUSTER_STATUS_COLUMNS = "cluster, member, report, received"
ROLLOUT_COLUMNS = "group_name, counter, state, version"


def challenge_values(challenge: ChallengeRecord) -> tuple[object, ...]:
    return (
        challenge.id,
        challenge.ek_fingerprint,
        challenge.ak_public,
        challenge.nonce,
        challenge.secret_digest,
        json.dumps(challenge.claims),
        challenge.created_at,
        challenge.expires_at,
        challenge.used_at,
        challenge.purpose,
    )


def challenge_record(row: Row) -> ChallengeRecord:
    used = row["used_at"]
    return ChallengeRecord(
        id=str(row["id"]),
        ek_fingerprint=str(row["ek_fingerprint"]),
        ak_public=bytes(row["ak_public"]),
        nonce=bytes(row["nonce"]),
        secret_digest=bytes(row["secret_digest"]),
        claims=json.loads(str(row["claims"])),
        created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]),
        used_at=None if used is None else float(used),
        purpose=str(row["purpose"]),
    )


def device_values(device: DeviceRecord) -> tuple[object, ...]:
    return (
        device.ek_fingerprint,
        device.spiffe_id,
        device.device_class,
        json.dumps(device.claims),
        device.ak_name,
        device.enrolled_at,
        device.status,
        device.attested_at,
    )


def device_record(row: Row) -> DeviceRecord:
    return DeviceRecord(
        ek_fingerprint=str(row["ek_fingerprint"]),
        spiffe_id=str(row["spiffe_id"]),
        device_class=str(row["device_class"]),
        claims=json.loads(str(row["claims"])),
        ak_name=str(row["ak_name"]),
        enrolled_at=float(row["enrolled_at"]),
        status=str(row["status"]),
        attested_at=float(row["attested_at"]),
    )


def svid_values(svid: SvidRecord) -> tuple[object, ...]:
    return (svid.serial, svid.spiffe_id, svid.ek_fingerprint, svid.not_before, svid.not_after, svid.kind)


def svid_record(row: Row) -> SvidRecord:
    return SvidRecord(
        serial=str(row["serial"]),
        spiffe_id=str(row["spiffe_id"]),
        ek_fingerprint=str(row["ek_fingerprint"]),
        not_before=float(row["not_before"]),
        not_after=float(row["not_after"]),
        kind=str(row["kind"]),
    )


def revocation_values(revocation: RevocationRecord) -> tuple[object, ...]:
    return (
        revocation.spiffe_id,
        revocation.ek_fingerprint,
        revocation.reason,
        revocation.revoked_by,
        revocation.revoked_at,
    )


def revocation_record(row: Row) -> RevocationRecord:
    return RevocationRecord(
        spiffe_id=str(row["spiffe_id"]),
        ek_fingerprint=str(row["ek_fingerprint"]),
        reason=str(row["reason"]),
        revoked_by=str(row["revoked_by"]),
        revoked_at=float(row["revoked_at"]),
        sequence=int(row["sequence"]),
    )


def entry_values(entry: EntryRecord) -> tuple[object, ...]:
    # selectors sorted: the unique constraint (spiffe_id, parent_id, selectors) must not depend on their order
    return (
        entry.id,
        entry.spiffe_id,
        entry.parent_id,
        json.dumps(sorted(entry.selectors)),
        entry.ttl_s,
        entry.created_at,
    )


def entry_record(row: Row) -> EntryRecord:
    return EntryRecord(
        id=str(row["id"]),
        spiffe_id=str(row["spiffe_id"]),
        parent_id=str(row["parent_id"]),
        selectors=tuple(json.loads(str(row["selectors"]))),
        ttl_s=int(row["ttl_s"]),
        created_at=float(row["created_at"]),
    )


def audit_values(event: AuditEvent) -> tuple[object, ...]:
    return (event.at, event.event, event.outcome, event.subject, json.dumps(event.detail), event.count)


def audit_event(row: Row) -> AuditEvent:
    return AuditEvent(
        at=float(row["at"]),
        event=str(row["event"]),
        outcome=str(row["outcome"]),
        subject=str(row["subject"]),
        detail=json.loads(str(row["detail"])),
        count=int(row["count"]),
    )


def cluster_status_values(record: ClusterStatusRecord) -> tuple[object, ...]:
    return (record.cluster, record.member, json.dumps(record.report, sort_keys=True), record.received)


def cluster_status_record(row: Row) -> ClusterStatusRecord:
    report = json.loads(row["report"])
    return ClusterStatusRecord(
        cluster=row["cluster"],
        member=row["member"],
        report=report if isinstance(report, dict) else {},
        received=float(row["received"]),
    )


def rollout_record(row: Row) -> RolloutRecord:
    state = json.loads(row["state"])
    if not isinstance(state, dict):
        raise ValueError(f"rollout of group {row['group_name']!r}: stored state is not an object")
    return RolloutRecord(str(row["group_name"]), int(row["counter"]), state, int(row["version"]))
