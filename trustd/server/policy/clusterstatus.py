"""What each cluster enforces, as its members report it: the syncer (the NetworkPolicy revision it applied, and
whether it hands bundles to the admission webhook) and every live webhook replica (the admission revision and
counter it enforces, its last refused swap).

A rollout counts a cluster as applied only when both are: its NetworkPolicies at the rollout's revision, and,
when its syncer hands bundles over, every live replica at the rollout's counter (at least one heard from). A
replica not heard from in `REPLICA_TTL_S` (three heartbeats) drops out: a pod deleted or rescheduled does not
hold a wave back forever, and a live one that lags does. A replica whose OPA refused the rollout's revision
makes the cluster failed, with its reason.

Every report is kept in the store (`ClusterStatusRecord`, both backends) so that a hub restart keeps the view;
a member is written at most once per `PERSIST_EVERY_S` unless what it reports changed, and the writes are
batched by the hub's `keep_flushed` task every `FLUSH_EVERY_S` (off the loop for PostgreSQL), never on a
report's request: 10,000 syncers' reports cost no store round trip each, and a store outage delays the writes
(kept for the next round) without failing a report. The caller decides the member's cluster from its SVID:
nothing here trusts a cluster name in a body.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trustd.errors import ConflictError, StoreError
from trustd.server.store import off_loop
from trustd.server.store.base import ClusterStatusRecord, Store

log = logging.getLogger("trustd.policy.clusterstatus")

#: how often a webhook replica reports when nothing changed (it reports at once on a change)
REPLICA_HEARTBEAT_S = 30.0
#: a replica not heard from in this long has dropped out of the cluster's view
REPLICA_TTL_S = 3 * REPLICA_HEARTBEAT_S
#: an unchanged report is written to the store at most this often (a changed one at once)
PERSIST_EVERY_S = REPLICA_HEARTBEAT_S
#: how often the hub writes what reports changed to the store
FLUSH_EVERY_S = 1.0
#: replicas on one store learn each other's reports by time received: each look reaches this far back before
#: the newest it saw (clock skew between replicas, a write batched late), and every FULL_READ_S it reads all
#: (a write held back longer, by a store outage)
OVERLAP_S = 60.0
FULL_READ_S = 60.0
#: live replicas per cluster; one more is refused (a limit refuses, it never drops a replica to make room)
MAX_REPLICAS = 64
SYNCER = "syncer"
_POD_PREFIX = "pod:"
#: syncer `admission` values that say the cluster's syncer hands bundles to its webhook
_HANDOFF = ("handed-over", "failed:")


class ReplicaLimitError(ConflictError):
    code = "too_many_replicas"


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """One webhook replica's report: what `AdmissionController.status` says, and the pod it comes from."""

    pod: str
    revision: str
    counter: int
    swaps: int = 0
    last_failure: str = ""
    last_failed_revision: str = ""

    def state(self, revision: str, counter: int) -> tuple[str, str]:
        """("applied" | "failed" | "pending", reason) against the rollout's revision and counter."""
        if self.counter >= counter:
            return "applied", ""
        if self.last_failed_revision == revision:
            return "failed", self.last_failure
        return "pending", ""


@dataclass(slots=True)
class _Member:
    report: dict[str, Any]
    received: float
    persisted_at: float = 0.0


class ClusterStatus:
    """In memory, for every poll and report in O(1); persisted through `flush`, which the API calls off the loop
    (PostgreSQL waits on the network)."""

    def __init__(self, store: Store | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._members: dict[str, dict[str, _Member]] = {}  # cluster -> member -> last report
        self._dirty: dict[tuple[str, str], ClusterStatusRecord] = {}
        self._lock = threading.Lock()  # flush runs on a worker thread
        self._newest = 0.0  # the newest `received` read from the store
        self._read_all_at = 0.0
        if store is not None:
            self.take(store.cluster_statuses())
            self._read_all_at = time.monotonic()

    # -- reports ---------------------------------------------------------------------------------------------
    def syncer_report(self, cluster: str, report: Mapping[str, Any]) -> None:
        members = self._members.setdefault(cluster, {})
        previous = members.get(SYNCER)
        handoff = str(report.get("admission") or "").startswith(_HANDOFF) or bool(
            previous is not None and previous.report.get("handoff")
        )
        kept = {k: report.get(k) for k in ("revision", "result", "error", "admission")}
        kept["handoff"] = handoff  # sticky: an UNCHANGED report after a handoff carries none
        self._put(cluster, SYNCER, kept)

    def replica_report(self, cluster: str, replica: ReplicaReport) -> None:
        """Raises ReplicaLimitError for a new pod when the cluster already has MAX_REPLICAS live ones."""
        member = _POD_PREFIX + replica.pod
        now = self._clock()
        live = self._live(cluster, now)
        if member not in live and len(live) >= MAX_REPLICAS:
            raise ReplicaLimitError(
                f"cluster {cluster!r} has {len(live)} live admission replicas reporting, the most the hub keeps; "
                f"{replica.pod!r} is refused until one drops out ({REPLICA_TTL_S:.0f} s without a report)"
            )
        report = asdict(replica)
        del report["pod"]
        self._put(cluster, member, report)

    def _put(self, cluster: str, member: str, report: dict[str, Any]) -> None:
        now = self._clock()
        members = self._members.setdefault(cluster, {})
        previous = members.get(member)
        persisted_at = previous.persisted_at if previous is not None else 0.0
        changed = previous is None or previous.report != report
        if changed or now - persisted_at >= PERSIST_EVERY_S:
            persisted_at = now
            with self._lock:
                self._dirty[(cluster, member)] = ClusterStatusRecord(cluster, member, report, now)
        members[member] = _Member(report, now, persisted_at)

    def flush(self) -> None:
        """Write what changed since the last flush to the store; on a StoreError what was not written is kept
        for the next flush (a newer report of the same member wins) and the error raised."""
        if self._store is None:
            return
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        written: set[tuple[str, str]] = set()
        try:
            for key, record in dirty.items():
                self._store.put_cluster_status(record)
                written.add(key)
        except StoreError:
            with self._lock:
                for key, record in dirty.items():
                    if key not in written:
                        self._dirty.setdefault(key, record)
            raise

    def fetch(self) -> list[ClusterStatusRecord]:
        """What the store holds that this replica may not have seen (blocking: a worker thread's call)."""
        if self._store is None:
            return []
        if time.monotonic() - self._read_all_at >= FULL_READ_S:
            self._read_all_at = time.monotonic()
            return list(self._store.cluster_statuses())
        return list(self._store.cluster_statuses_since(self._newest - OVERLAP_S))

    def take(self, records: list[ClusterStatusRecord] | Sequence[ClusterStatusRecord]) -> set[str]:
        """Records read from the store, each kept where it is newer than what this replica holds of the member
        (a report another replica took); returns the clusters whose view changed."""
        changed = set()
        for record in records:
            self._newest = max(self._newest, record.received)
            members = self._members.setdefault(record.cluster, {})
            held = members.get(record.member)
            if held is None or record.received > held.received:
                members[record.member] = _Member(dict(record.report), record.received, persisted_at=record.received)
                changed.add(record.cluster)
        return changed

    async def keep_flushed(self, every_s: float = FLUSH_EVERY_S) -> None:
        """The hub's lifespan task: flush every `every_s` while there is something to write (the lifespan
        calls `flush` once more at shutdown)."""
        if self._store is None:
            return
        store = self._store
        while True:
            await asyncio.sleep(every_s)
            if self._dirty:
                try:
                    await off_loop(store, self.flush)
                except StoreError as exc:
                    log.warning("cluster status kept in memory until the store answers: %s", exc.diagnostics())

    # -- what the rollout reads ------------------------------------------------------------------------------
    def _live(self, cluster: str, now: float) -> dict[str, _Member]:
        members = self._members.get(cluster, {})
        return {k: m for k, m in members.items() if k.startswith(_POD_PREFIX) and now - m.received <= REPLICA_TTL_S}

    def replicas(self, cluster: str) -> dict[str, ReplicaReport]:
        """The live replicas of `cluster`, by pod name."""
        live = self._live(cluster, self._clock())
        return {k[len(_POD_PREFIX) :]: ReplicaReport(pod=k[len(_POD_PREFIX) :], **m.report) for k, m in live.items()}

    def heard(self, cluster: str) -> dict[str, float]:
        """When each live replica of `cluster` was last heard from (time.time() seconds), by pod name."""
        live = self._live(cluster, self._clock())
        return {k[len(_POD_PREFIX) :]: m.received for k, m in live.items()}

    def syncer(self, cluster: str) -> dict[str, Any] | None:
        member = self._members.get(cluster, {}).get(SYNCER)
        return None if member is None else {**member.report, "received": int(member.received)}

    def admission_state(self, cluster: str, revision: str, counter: int) -> tuple[str, str]:
        """("applied" | "failed" | "pending", reason) of the cluster's admission side for a rollout; a cluster
        whose syncer does not hand bundles to its webhook has none to wait for ("applied")."""
        syncer = self._members.get(cluster, {}).get(SYNCER)
        if syncer is None or not syncer.report.get("handoff"):
            return "applied", ""
        if (
            str(syncer.report.get("admission") or "").startswith("failed:")
            and syncer.report.get("revision") == revision
        ):
            return "failed", f"admission handoff {syncer.report['admission']}"
        replicas = self.replicas(cluster)
        if not replicas:
            return "pending", "no webhook replica has reported"
        states = {pod: r.state(revision, counter) for pod, r in sorted(replicas.items())}
        for pod, (state, reason) in states.items():
            if state == "failed":
                return "failed", f"webhook replica {pod}: {reason}"
        if all(state == "applied" for state, _ in states.values()):
            return "applied", ""
        return "pending", ", ".join(
            f"{pod} at counter {replicas[pod].counter}" for pod, s in states.items() if s[0] != "applied"
        )

    def view(self, cluster: str, revision: str, counter: int) -> dict[str, Any]:
        """The cluster's part of the rollout view."""
        syncer = self.syncer(cluster)
        networkpolicies = None
        if syncer is not None:
            networkpolicies = {"revision": syncer.get("revision"), "result": syncer.get("result")}
            if syncer.get("error"):
                networkpolicies["error"] = syncer["error"]
        state, reason = self.admission_state(cluster, revision, counter)
        replicas = {}
        for pod, replica in sorted(self.replicas(cluster).items()):
            replica_state, replica_reason = replica.state(revision, counter)
            entry: dict[str, Any] = {"revision": replica.revision, "counter": replica.counter, "state": replica_state}
            if replica_reason:
                entry["reason"] = replica_reason
            replicas[pod] = entry
        admission: dict[str, Any] = {
            "handoff": bool(syncer and syncer.get("handoff")),
            "state": state,
            "replicas": replicas,
        }
        if reason:
            admission["reason"] = reason
        return {"networkpolicies": networkpolicies, "admission": admission}
