"""The hub's side of policy distribution: signed bundles per cluster group, staged rollouts, cluster status.

A published bundle must come from a publisher of that group (the fleet file lists publishers per group),
verify under a publisher key the hub trusts, be signed for that group (its manifest names it), hold no
NetworkPolicy or admission policy file the syncer would refuse, and be newer than the group's last one; the
hub never re-signs (the key that signs policy stays with the policy pipeline). Which revision a cluster
gets follows the group's rollout: canary clusters first, then waves by share of the group; a wave opens when
every canary, or the group's `advanceAt` share of the previous wave, reported the new revision applied;
failures above the threshold halt it.
Clusters long-poll: an unchanged answer is a 304 after up to `wait` seconds, a few hundred bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.errors import BundleError
from edgetrust.bundles.format import Bundle, check_bundle, unpack
from edgetrust.bundles.signing import verify_bundle
from trustd.errors import StoreConflictError, StoreError, TrustdError
from trustd.server.policy.clusterstatus import ClusterStatus, ReplicaReport
from trustd.server.policy.fleet import (
    Fleet,
    Group,
    PolicyDistributionError,
    PublisherNotAuthorizedError,
    StaleBundleError,
    UnknownGroupError,
)
from trustd.server.policy.rollout import DEFAULT_WAVES, Op, Rollout, plan_waves
from trustd.server.revocations import Revocations
from trustd.server.store import Store, off_loop
from trustd.server.store.base import POLICY_CHANNEL, RolloutRecord

#: Fleet, Group and the errors live in fleet.py, Rollout in rollout.py; importable from here as before
__all__ = [
    "DEFAULT_WAVES",
    "Fleet",
    "Group",
    "PolicyBundles",
    "PolicyDistributionError",
    "PublisherNotAuthorizedError",
    "Rollout",
    "StaleBundleError",
    "UnknownGroupError",
    "verified_bundle",
]

log = logging.getLogger(__name__)

#: how often a replica writes what it learnt and looks for what other replicas changed (with PostgreSQL, a
#: notification wakes it at once; this bounds what a lost notification costs)
SYNC_S = 0.5
#: the most of its time a replica spends writing rollout progress (see `keep_synced`)
SYNC_DUTY = 0.1


def verified_bundle(group: str, blob: bytes, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> Bundle:
    """`blob` unpacked, its signature verified under `keys`, signed for `group`, and within the syncer's own
    rules (NetworkPolicies, policy files): what is refused here no cluster ever sees."""
    try:
        bundle = unpack(blob)
        verify_bundle(bundle, keys)
        _ = bundle.counter  # read here: a counter out of range (10**260) is a refusal, not a server error
        signed_for = bundle.group
        check_bundle(bundle)
    except BundleError as exc:
        raise PolicyDistributionError(f"bundle refused: {exc.code}: {exc.diagnostics()}") from exc
    if signed_for != group:
        raise PolicyDistributionError(
            f"bundle refused: bundle_wrong_group: it is signed for cluster group {signed_for!r}, not {group!r}"
        )
    return bundle


def _with_etag(blob: bytes) -> tuple[bytes, str]:
    return blob, '"' + hashlib.sha256(blob).hexdigest()[:32] + '"'


class PolicyBundles:
    """The bundles and rollouts, kept in the store and shared by every replica on it; in memory, this replica's
    copy, which answers polls without a store round trip.

    `keep_synced` (one task per replica) makes the copies agree: it writes what this replica learnt (reports)
    as operations merged into the stored rollout (rollout.py), and reads what another replica changed (a
    publish, a wave opened) by the rollouts' versions, waking the long polls it holds. With PostgreSQL it is
    woken by the store's notification (LISTEN/NOTIFY), with a look each `SYNC_S` as well, so that a lost
    notification costs at most that much."""

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        publisher_keys: Mapping[str, ec.EllipticCurvePublicKey],
        revocations: Revocations | None = None,
        clusters: ClusterStatus | None = None,
    ) -> None:
        self._store = store
        #: what each cluster's syncer and webhook replicas report (kept in the store when one is given)
        self.clusters = clusters if clusters is not None else ClusterStatus()
        self.revocations = revocations
        if revocations is not None:
            revocations.on_change(self._notify_all)
        self.fleet = fleet
        self._keys = publisher_keys
        self._blobs: dict[tuple[str, int], tuple[bytes, str]] = {}  # (group, counter) -> (blob, ETag)
        self._rollouts: dict[str, Rollout] = {}
        self._versions: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}
        #: the loop long polls wait on, known from the first one
        self._loop: asyncio.AbstractEventLoop | None = None
        #: held while a rollout copy is changed or replaced (reports on the loop, the flush on a worker thread)
        self._lock = threading.Lock()
        self._flush_now: asyncio.Event | None = None
        for record in store.rollouts():
            self._take(record)

    @property
    def status(self) -> dict[str, dict[str, Any]]:
        """Each cluster's last syncer report, with when it was received (the cluster status, which the store keeps)."""
        return {c: report for c in self.fleet.clusters if (report := self.clusters.syncer(c)) is not None}

    @property
    def publisher_keys(self) -> Mapping[str, ec.EllipticCurvePublicKey]:
        return self._keys

    def _take(self, record: RolloutRecord) -> None:
        """A stored rollout becomes this replica's copy, with the bundles it serves (its own and the previous),
        and what this replica recorded and has not flushed yet replayed onto it."""
        rollout = Rollout.from_state(record.state)
        for counter in (rollout.counter, rollout.previous):
            if counter is not None and (record.group, counter) not in self._blobs:
                blob = self._store.bundle(record.group, counter)
                if blob is not None:
                    self._blobs[(record.group, counter)] = _with_etag(blob)
        group = self.fleet.groups.get(record.group)
        with self._lock:
            if record.version < self._versions.get(record.group, 0):
                return  # read before a write this replica has taken since (a publish here): not newer
            held = self._rollouts.get(record.group)
            if held is not None and held.counter == rollout.counter:  # the same rollout, moved on: in place
                pending = list(held.ops)
                held.reset(record.state)
                held.replay(pending, group.max_failures if group else 0)
                held.ops.extend(pending)  # still to be written
            else:
                self._rollouts[record.group] = rollout
            self._versions[record.group] = record.version

    def _event(self, group: str) -> asyncio.Event:
        return self._changed.setdefault(group, asyncio.Event())

    def _notify(self, group: str) -> None:
        if self._hop_to_loop(self._notify, group):
            return
        event = self._changed.pop(group, None)
        if event is not None:
            event.set()

    def _notify_all(self) -> None:
        if self._hop_to_loop(self._notify_all):
            return
        for group in list(self._changed):
            self._notify(group)

    def _hop_to_loop(self, call: Callable[..., None], *args: Any) -> bool:
        """Schedule `call` on the loop the long polls wait on when called from another thread (a sync route's
        worker, the revocation watcher's store read): asyncio events are not thread-safe, and an event set from
        another thread wakes its waiters late or never."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            if asyncio.get_running_loop() is loop:
                return False
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(call, *args)
        return True

    def publish(self, group_name: str, blob: bytes, *, publisher: str) -> Rollout:
        """`publisher` is the caller's SPIFFE ID; it must be listed for this group in the fleet file. Writes the
        store (async code calls it through `off_loop`)."""
        group = self.fleet.groups.get(group_name)
        if group is None:
            raise UnknownGroupError(f"no cluster group {group_name!r}")
        if publisher not in group.publishers:
            raise PublisherNotAuthorizedError(f"{publisher} may not publish to cluster group {group_name!r}")
        bundle = verified_bundle(group_name, blob, self._keys)
        counter = bundle.counter
        current = self._rollouts.get(group_name)
        if current is not None and counter <= current.counter:
            raise StaleBundleError(f"bundle counter {counter} is not newer than {current.counter}")
        rollout = Rollout(
            bundle.revision,
            counter,
            current.counter if current else None,
            plan_waves(self.fleet.members(group), group.canary, group.waves),
            canary=bool(group.canary),
            advance_at=group.advance_at,
        )
        try:  # the store decides between replicas: a newer bundle published through another one refuses this
            version = self._store.publish_bundle(group_name, counter, blob, rollout.state(), now=time.time())
        except StoreConflictError as exc:
            raise StaleBundleError(f"{exc.diagnostics()} (published through another hub replica)") from exc
        self._blobs[(group_name, counter)] = _with_etag(blob)
        with self._lock:
            if version > self._versions.get(group_name, 0):  # two publishes here: the later commit stands
                self._rollouts[group_name] = rollout
                self._versions[group_name] = version
        self._notify(group_name)
        return rollout

    async def publish_off_loop(self, group_name: str, blob: bytes, *, publisher: str) -> Rollout:
        """`publish` from async code: on a worker thread when the store waits on the network."""
        self._loop = asyncio.get_running_loop()
        return await off_loop(self._store, lambda: self.publish(group_name, blob, publisher=publisher))

    def rollout(self, group: str) -> Rollout | None:
        return self._rollouts.get(group)

    def bundle_for(self, cluster: str) -> tuple[bytes, str] | None:
        group = self.fleet.group_of(cluster)
        rollout = self._rollouts.get(group.name) if group else None
        if group is None or rollout is None:
            return None
        counter = rollout.counter if rollout.released(cluster) and not rollout.halted else rollout.previous
        if counter is None:
            return None
        return self._blobs.get((group.name, counter))

    async def wait_for_change(
        self, cluster: str, etag: str | None, wait_s: float, revocations_etag: str | None = None
    ) -> tuple[bytes, str] | None:
        """The cluster's bundle if it differs from `etag`, waiting up to wait_s for a change; else None.

        Also returns (None) early when the revocation list moved past `revocations_etag`, so the cluster
        learns of a revocation on the connection it already holds, without a second long poll."""
        self._loop = asyncio.get_running_loop()
        group = self.fleet.group_of(cluster)
        deadline = time.monotonic() + wait_s
        while True:
            found = self.bundle_for(cluster)
            if found is not None and found[1] != etag:
                return found
            if (
                revocations_etag is not None
                and self.revocations is not None
                and self.revocations.current().etag != revocations_etag
            ):
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or group is None:
                return None
            try:  # asyncio.timeout, not wait_for: no task of its own per waiting poll (10,000 of them held)
                async with asyncio.timeout(remaining):
                    await self._event(group.name).wait()
            except TimeoutError:
                return None

    def long_polls_waiting(self, group: str) -> bool:
        """Whether a long poll of the group's clusters waits here for a change (what tests wait for)."""
        return group in self._changed

    def report(self, cluster: str, report: Mapping[str, Any]) -> None:
        """The cluster's syncer's status report (the cluster is the caller's, from its SVID)."""
        self.clusters.syncer_report(cluster, report)
        group = self.fleet.group_of(cluster)
        rollout = self._rollouts.get(group.name) if group else None
        if group is None or rollout is None or report.get("revision") != rollout.revision:
            return
        with self._lock:
            if report.get("result") in ("applied", "unchanged"):
                rollout.set_networkpolicies(cluster, str(report["result"]))
                rollout.clear_failed(cluster)
                self._settle(rollout, cluster)
            elif report.get("result") in ("failed", "refused"):
                rollout.mark_failed(cluster, str(report.get("error", ""))[:300])
            decided = rollout.decide(group.max_failures)
        self._progress(group, decided)

    def report_replica(self, cluster: str, replica: ReplicaReport) -> None:
        """One admission webhook replica's report: what it enforces (ReplicaLimitError past MAX_REPLICAS)."""
        self.clusters.replica_report(cluster, replica)
        group = self.fleet.group_of(cluster)
        rollout = self._rollouts.get(group.name) if group else None
        if group is None or rollout is None or cluster not in rollout.networkpolicies:
            return
        with self._lock:
            self._settle(rollout, cluster)
            decided = rollout.decide(group.max_failures)
        self._progress(group, decided)

    def _settle(self, rollout: Rollout, cluster: str) -> None:
        """The cluster's NetworkPolicies are applied: it counts as applied when its admission side is too."""
        if cluster in rollout.applied:
            return
        state, reason = self.clusters.admission_state(cluster, rollout.revision, rollout.counter)
        if state == "applied":
            rollout.mark_applied(cluster, rollout.networkpolicies[cluster])
            rollout.clear_failed(cluster)
        elif state == "failed":
            rollout.mark_failed(cluster, reason[:300])

    def _progress(self, group: Group, decided: bool) -> None:
        """A wave opened or the rollout halted here: this replica's polls learn it now, the store (and so the
        other replicas) at the next flush, which `keep_synced` runs at once; per-cluster progress is written
        with the next flush (each `SYNC_S`): a store write per report of 10,000 clusters would be the bottleneck."""
        if not decided:
            return
        self._notify(group.name)
        if self._flush_now is not None:
            self._flush_now.set()
        elif not self._store.blocking:  # no sync task (a test, a tool): write now, in-process
            try:
                self.flush()
            except StoreError as exc:  # kept for the next flush; the report itself was taken
                log.warning("rollout progress kept in memory until the store answers: %s", exc.diagnostics())

    def flush(self) -> None:
        """Write what this replica learnt into the stored rollouts (blocking: async code calls it off the loop).
        On a StoreError what was not written is kept for the next flush."""
        # the cluster status first: a replica that reads a rollout's op reads the statuses after it, and so
        # finds what the op was decided from (a syncer's handoff, its webhook replicas)
        self.clusters.flush()
        with self._lock:
            work = [(name, r.counter, list(r.ops)) for name, r in self._rollouts.items() if r.ops]
            for name, _counter, ops in work:
                del self._rollouts[name].ops[: len(ops)]
        for index, (name, counter, ops) in enumerate(work):
            group = self.fleet.groups.get(name)
            max_failures = group.max_failures if group else 0

            def merge(state: dict[str, Any], ops: list[Op] = ops, max_failures: int = max_failures) -> dict[str, Any]:
                merged = Rollout.from_state(state)
                merged.replay(ops, max_failures)
                return merged.state()

            try:
                record = self._store.update_rollout(name, counter, merge)
            except StoreError:
                with self._lock:  # put back what was not written, in order, before what came since
                    for left, left_counter, left_ops in work[index:]:
                        held = self._rollouts.get(left)
                        if held is not None and held.counter == left_counter:
                            held.ops[:0] = left_ops
                raise
            if record is not None:
                before = self._serving(name)
                self._take(record)
                if self._serving(name) != before:  # the merge opened a wave or halted: the polls learn it
                    self._notify(name)

    def _serving(self, group: str) -> tuple[Any, ...] | None:
        """What `bundle_for` answers the group's clusters from. A flush that leaves it as it was wakes no poll:
        waking all 10,000 of a group after each 0.5 s flush of reports, to find nothing new, cost the hub more
        CPU than the reports (fleet_sim)."""
        rollout = self._rollouts.get(group)
        if rollout is None:
            return None
        blobs = tuple((group, c) in self._blobs for c in (rollout.counter, rollout.previous))
        return rollout.counter, rollout.previous, rollout.opened, rollout.halted, blobs

    def sync(self) -> None:
        """Flush, then take what other replicas changed since the last look (blocking, as `flush`)."""
        self.flush()
        if not self._store.shared:  # a single replica (SQLite): nobody else writes what it would read
            return
        versions = self._store.rollout_versions()
        moved = [] if all(self._versions.get(g) == v for g, v in versions.items()) else self._store.rollouts()
        # after the rollouts (see `flush`), and taken before them: a report this replica takes meanwhile
        # already finds the syncer's status another replica took
        reported = self.clusters.take(self.clusters.fetch())
        for record in moved:
            if self._versions.get(record.group) != record.version:
                self._take(record)
                self._notify(record.group)
        if self._settle_reported(reported):
            self.flush()

    def _settle_reported(self, clusters: set[str]) -> bool:
        """Clusters whose status another replica took: settle them here as a report here would (True when a
        rollout moved and should be written)."""
        decided = False
        for cluster in sorted(clusters):
            group = self.fleet.group_of(cluster)
            rollout = self._rollouts.get(group.name) if group else None
            if group is None or rollout is None or cluster not in rollout.networkpolicies:
                continue
            with self._lock:
                self._settle(rollout, cluster)
                if rollout.decide(group.max_failures):
                    decided = True
                    self._notify(group.name)
        return decided or any(r.ops for r in self._rollouts.values())

    async def keep_synced(self, every_s: float = SYNC_S) -> None:
        """The replica's sync task: at once when this replica decided something or the store notified a change
        (PostgreSQL), else each `every_s`. A store outage is logged and retried, never ends the task."""
        self._loop = asyncio.get_running_loop()
        self._flush_now = asyncio.Event()
        unsubscribe = self._store.subscribe(POLICY_CHANNEL, self._wake)
        failing = False
        pause = every_s
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flush_now.wait(), timeout=pause)
                self._flush_now.clear()
                started = time.monotonic()
                try:
                    await off_loop(self._store, self.sync)
                except TrustdError as exc:
                    if not failing:
                        log.warning("policy state kept in memory until the store answers: %s", exc.diagnostics())
                    failing = True
                else:
                    failing = False
                # a sync costs the size of the rollouts it writes (a group of 20,000 clusters: 130 ms, on the loop
                # with SQLite): progress is written at most SYNC_DUTY of the time, whatever the fleet's size; a
                # wave opened or a halt is still written at once (_flush_now)
                pause = max(every_s, (time.monotonic() - started) / SYNC_DUTY)
        finally:
            self._flush_now = None
            unsubscribe()

    def _wake(self) -> None:
        """The store's notification (on its listener thread): another replica changed a rollout."""
        if self._hop_to_loop(self._wake):
            return
        if self._flush_now is not None:
            self._flush_now.set()

    def rollout_view(self, group: str) -> dict[str, Any] | None:
        """The rollout's view, with per cluster its NetworkPolicy revision and each live replica's admission one."""
        rollout = self._rollouts.get(group)
        if rollout is None:
            return None
        view = rollout.view()
        view["clusters"] = {
            cluster: self.clusters.view(cluster, rollout.revision, rollout.counter)
            for wave in rollout.waves
            for cluster in wave
        }
        return view
