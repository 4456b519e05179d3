"""Rows to records and back, the same for every backend: one place decides how a record is stored."""

from __future__ import annotations

import json
from typing import Any

from trustd.store.base import AuditEvent, ChallengeRecord, DeviceRecord, EntryRecord, RevocationRecord

REVOCATION_SELECT = "SELECT spiffe_id, ek_fingerprint, reason, revoked_by, revoked_at, sequence FROM revocations"
#: columns named, not `*`: later migrations append columns (the stores' INSERT and RETURNING spell them alike)
CHALLENGE_SELECT = (
    "SELECT id, ek_fingerprint, ak_public, nonce, secret_digest, claims, created_at, expires_at, used_at, purpose "
    "FROM challenges"
)
AUDIT_SELECT = "SELECT at, event, outcome, subject, detail, count FROM audit"


def selectors_column(entry: EntryRecord) -> str:
    return json.dumps(sorted(entry.selectors))


def entry_record(row: tuple[Any, ...]) -> EntryRecord:
    (eid, spiffe_id, parent_id, selectors, ttl_s, created) = row
    return EntryRecord(
        str(eid), str(spiffe_id), str(parent_id), tuple(json.loads(selectors)), int(ttl_s), float(created)
    )


def revocation_record(row: tuple[Any, ...]) -> RevocationRecord:
    (spiffe_id, ek, reason, by, at, sequence) = row
    return RevocationRecord(str(spiffe_id), str(ek), str(reason), str(by), float(at), int(sequence))


def challenge_record(row: tuple[Any, ...]) -> ChallengeRecord:
    (cid, ek, ak_public, nonce, digest, claims, created, expires, used, purpose) = row
    return ChallengeRecord(
        id=str(cid),
        ek_fingerprint=str(ek),
        ak_public=bytes(ak_public),
        nonce=bytes(nonce),
        secret_digest=bytes(digest),
        claims=json.loads(str(claims)),
        created_at=float(created),
        expires_at=float(expires),
        used_at=None if used is None else float(used),
        purpose=str(purpose),
    )


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


def audit_event(row: tuple[Any, ...]) -> AuditEvent:
    (at, event, outcome, subject, detail, count) = row
    return AuditEvent(float(at), str(event), str(outcome), str(subject), json.loads(str(detail)), int(count))


def device_record(row: tuple[Any, ...]) -> DeviceRecord:
    (ek, spiffe_id, device_class, claims, ak_name, enrolled, status) = row
    return DeviceRecord(
        ek_fingerprint=str(ek),
        spiffe_id=str(spiffe_id),
        device_class=str(device_class),
        claims=json.loads(str(claims)),
        ak_name=str(ak_name),
        enrolled_at=float(enrolled),
        status=str(status),
    )
