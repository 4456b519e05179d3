"""The store's contract: records as frozen values, and the few atomic operations enrollment relies on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

#: the notification channels (`Store.subscribe`): a rollout written, a revocation recorded
POLICY_CHANNEL = "edgetrust_policy"
REVOCATIONS_CHANNEL = "edgetrust_revocations"


@dataclass(frozen=True, slots=True)
class ChallengeRecord:
    """What the hub must remember between the two enrollment round trips.

    Only a digest of the activation secret is kept, so a read of the store does not let anyone answer
    a pending challenge.
    """

    id: str
    ek_fingerprint: str
    ak_public: bytes
    nonce: bytes
    secret_digest: bytes
    claims: dict[str, str]
    created_at: float
    expires_at: float
    used_at: float | None = None
    #: what the challenge is for ("enroll", "renew"): the per-EK cap on pending challenges counts each apart,
    #: so a flood of enrollment round 1s replayed with a device's public EK certificate never evicts its renewal
    purpose: str = "enroll"


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    ek_fingerprint: str
    spiffe_id: str
    device_class: str
    claims: dict[str, str]
    ak_name: str
    enrolled_at: float
    status: str = "enrolled"
    #: when the hub last verified a quote of this device (enrollment or renewal); 0 when never recorded
    attested_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SvidRecord:
    serial: str
    spiffe_id: str
    ek_fingerprint: str
    not_before: float
    not_after: float
    kind: str = "x509"


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    """A SPIFFE ID taken away. `ek_fingerprint` is set when a device was revoked: its TPM may not enroll again."""

    spiffe_id: str
    ek_fingerprint: str
    reason: str
    revoked_by: str
    revoked_at: float
    sequence: int = 0  # the store's order of revocations; the revocation list's counter


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """A registration entry: workloads on the node `parent_id` matching every selector get `spiffe_id`.

    Selectors are SPIRE's spelling (`unix:uid:1000`, `unix:gid:50`, `k8s:ns:shop`, `k8s:sa:web`), so an
    operator moving from SPIRE keeps its entries.
    """

    id: str
    spiffe_id: str
    parent_id: str
    selectors: tuple[str, ...]
    ttl_s: int
    created_at: float


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened. `count` > 1 is an aggregate: that many refusals of one kind from one source in one
    minute (the first one's subject and reason), so that a flood of garbage does not grow the store."""

    at: float
    event: str
    outcome: str
    subject: str
    detail: dict[str, str] = field(default_factory=dict)
    count: int = 1


@dataclass(frozen=True, slots=True)
class ClusterStatusRecord:
    """The last status one member of a cluster reported to the hub, kept so a hub restart keeps the rollout's
    view: `member` is "syncer" (its NetworkPolicy report) or "pod:<name>" (an admission webhook replica's)."""

    cluster: str
    member: str
    report: dict[str, object]
    received: float


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A cluster group's rollout as stored: `state` is `Rollout.state()` (trustd/server/policy/distribution.py),
    `counter` its bundle's, `version` moves by one with each write (what replicas compare to notice a change)."""

    group: str
    counter: int
    state: dict[str, object]
    version: int


class Store(Protocol):
    @property
    def blocking(self) -> bool:
        """True when a call may wait on another machine (PostgreSQL): async code calls such a store through
        `trustd.server.store.off_loop`, on a worker thread; an in-process one (SQLite) is called on the loop."""
        ...

    @property
    def shared(self) -> bool:
        """True when other trustd replicas may write the same store (PostgreSQL): what one writes, the others
        must read (policy state, cluster status); False for SQLite, which serves a single replica."""
        ...

    def put_challenge(self, challenge: ChallengeRecord, *, keep_per_ek: int = 0) -> None:
        """Store a challenge. With `keep_per_ek` > 0, in the same transaction, drop the expired challenges of
        the same EK and purpose and the oldest beyond `keep_per_ek` - 1, so that round 1, which anyone holding
        a (public) EK certificate can replay, never stores more than `keep_per_ek` challenges per TPM."""
        ...

    def consume_challenge(self, challenge_id: str, *, now: float) -> ChallengeRecord:
        """Mark a challenge used and return it, atomically: a second call for the same id must fail.

        Raises ChallengeError (unknown, already used, expired) so each replay is refused exactly once.
        """
        ...

    def purge_challenges(self, *, now: float) -> int:
        """Delete the challenges expired before `now` (answered or not); returns how many."""
        ...

    def record_enrollment(self, device: DeviceRecord, svid: SvidRecord, event: AuditEvent) -> None:
        """Store the device, its SVID and the audit event in one transaction.

        Raises StoreConflictError when the SPIFFE ID is already held by another TPM (EK), so that one
        device can never take over another's identity by claiming its name.
        """
        ...

    def record_svid(self, svid: SvidRecord, event: AuditEvent, *, attested_at: float | None = None) -> None:
        """A renewed SVID and its audit event, in one transaction (StoreConflictError on a serial seen before);
        with `attested_at` (a renewal whose quote verified), the device's last attestation moves to it, in the
        same transaction."""
        ...

    def device(self, ek_fingerprint: str) -> DeviceRecord | None: ...

    def device_by_spiffe_id(self, spiffe_id: str) -> DeviceRecord | None: ...

    def devices(self) -> Sequence[DeviceRecord]: ...

    def svids(self, spiffe_id: str) -> Sequence[SvidRecord]: ...

    def revoke(self, revocation: RevocationRecord, event: AuditEvent) -> RevocationRecord:
        """Record a revocation (the device, if any, marked revoked) and its audit event in one transaction.

        Revoking what is already revoked returns the first record: the list's counter moves once per subject.
        """
        ...

    def revocations(self) -> Sequence[RevocationRecord]: ...

    def revocation(self, spiffe_id: str) -> RevocationRecord | None: ...

    def revocation_counter(self) -> int:
        """The sequence of the newest revocation (0 for none): what replicas compare each second."""
        ...

    def put_entry(self, entry: EntryRecord) -> None:
        """Raises StoreConflictError when an entry with the same SPIFFE ID, parent and selectors exists."""
        ...

    def delete_entry(self, entry_id: str) -> bool: ...

    def entries(self, *, parent_id: str | None = None) -> Sequence[EntryRecord]: ...

    def put_cluster_status(self, record: ClusterStatusRecord) -> None:
        """Insert or replace the status of (cluster, member)."""
        ...

    def delete_cluster_status(self, cluster: str, member: str) -> None: ...

    def cluster_statuses(self) -> Sequence[ClusterStatusRecord]: ...

    def cluster_statuses_since(self, received: float) -> Sequence[ClusterStatusRecord]:
        """The statuses received at or after `received` (what another replica wrote lately)."""
        ...

    def publish_bundle(self, group: str, counter: int, blob: bytes, state: dict[str, object], *, now: float) -> int:
        """Store a group's new bundle and its new rollout in one transaction; returns the rollout's version.

        Raises StoreConflictError when the group's stored rollout is at `counter` or newer: of two replicas
        publishing at once, the later (or the older bundle) is refused, never silently rolled back."""
        ...

    def put_bundle(self, group: str, counter: int, blob: bytes, *, now: float) -> None:
        """Keep a bundle with no rollout of its own (an import: the bundle a rollout falls back to); a bundle
        already kept under (group, counter) is left as it is."""
        ...

    def bundle(self, group: str, counter: int) -> bytes | None: ...

    def rollouts(self) -> Sequence[RolloutRecord]: ...

    def rollout_versions(self) -> dict[str, int]:
        """Group -> its rollout's version: the small read replicas repeat to notice another one's write."""
        ...

    def update_rollout(
        self, group: str, counter: int, change: Callable[[dict[str, object]], dict[str, object]]
    ) -> RolloutRecord | None:
        """Replace the group's rollout state by `change(stored state)`, the read and the write in one
        transaction (the row held until COMMIT: two replicas' updates never lose one another's). None, and
        nothing written, when the stored rollout is no longer the one of bundle `counter` (published since)."""
        ...

    def subscribe(self, channel: str, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` (from another thread) each time a write through any store on this database notified
        `channel` (the rollouts' and revocations' writes do); returns what ends the subscription. PostgreSQL:
        LISTEN/NOTIFY, across replicas. SQLite serves one replica, whose own changes wake it in process: a no-op.
        A notification may be lost (a connection dropped): subscribers also look on a timer."""
        ...

    def audit(self, event: AuditEvent) -> int:
        """Append an audit event; returns its row id (for `add_to_audit_count`)."""
        ...

    def add_to_audit_count(self, audit_id: int, more: int) -> None:
        """Count `more` occurrences into an aggregate audit row (one UPDATE for many refusals)."""
        ...

    def audit_events(self, *, limit: int = 100) -> Sequence[AuditEvent]: ...

    def close(self) -> None: ...
