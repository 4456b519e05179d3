"""The per-cluster syncer's algorithm: fetch, verify, refuse anything not newer, apply all-or-nothing, report.

Order matters for safety: nothing from a fetched bundle is used before its signature verifies; the rollback
guard moves before anything is applied; the last known good bundle is replaced only after a complete apply.
At start the agent re-applies what it last accepted, from disk, so a restart during a partition keeps the
cluster enforcing the newest policies it ever verified.

Where bundles come from is not this module's business: a `BundleSource` (syncer/sources.py: the hub's long
poll, an OCI mirror, a file) says what it can do (carry status reports, announce a revocation list), and the
algorithm asks nothing else of it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust._internal.retry import Backoff
from edgetrust.bundles.errors import BundleError, BundleGroupError, SourceRefusedError, SourceUnreachableError
from edgetrust.bundles.format import Bundle, check_bundle, unpack
from edgetrust.bundles.revocations import RevocationStore
from edgetrust.bundles.signing import verify_bundle
from syncer.apply import ApplyResult, apply_with_rollback, desired
from syncer.handoff import Handoff
from syncer.kube import KubeTarget
from syncer.state import AgentState

log = logging.getLogger("edgetrust.syncer")


class SyncResult(enum.StrEnum):
    """What one sync did; the value goes into status reports (and equals the string reports always carried)."""

    APPLIED = "applied"  # the bundle's NetworkPolicies are in the cluster now
    UNCHANGED = "unchanged"  # a bundle came, and the cluster already held what it says
    NOT_MODIFIED = "not-modified"  # no new bundle
    REFUSED = "refused"  # the bundle failed verification, the group, the policies or the rollback guard
    FAILED = "failed"  # verified, but the apply failed (rolled back to the last known good)
    UNREACHABLE = "unreachable"  # the source gave no bundle: nothing applied, the last known good kept
    SOURCE_REFUSED = "source-refused"  # the source answered no (the hub: not in the fleet, revoked; a 4xx)
    REVOCATIONS_REFUSED = "revocations-refused"  # the hub's revocation list did not verify

    @property
    def ok(self) -> bool:
        return self in (SyncResult.APPLIED, SyncResult.UNCHANGED, SyncResult.NOT_MODIFIED)


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a source's fetch gave: the newest bundle (None: not changed since the last fetch), and how many of
    the status reports handed to it the source delivered (those the agent may forget)."""

    bundle: bytes | None
    delivered: int = 0


class BundleSource(Protocol):
    @property
    def carries_reports(self) -> bool:
        """True when the source delivers status reports itself on its next fetch (the hub's long poll);
        otherwise the agent's reporter sends them after each sync."""

    async def fetch(self, reports: Sequence[Mapping[str, Any]]) -> Fetched:
        """The newest bundle; `reports` to deliver on the way when the source carries them. Raises a
        BundleError when it has no answer (the sync is then "unreachable"), SourceRefusedError when it
        answered no ("source-refused")."""

    async def fetch_revocations(self) -> tuple[bytes, str | None] | None:
        """A signed revocation list newer than the one held (and its ETag), or None."""

    def hold_revocations(self, etag: str | None) -> None:
        """The revocation list the agent holds now (so the source asks only for a newer one)."""


@dataclass(slots=True)
class SyncOutcome:
    result: SyncResult
    revision: str = ""
    error: str = ""
    detail: ApplyResult = field(default_factory=ApplyResult)
    #: an unreachable source's own "retry after" (a hub's 503 Retry-After), for the caller's backoff
    retry_after_s: float | None = None
    #: the webhook handoff of this bundle: "handed-over", "failed: <why>" (retried next sync), "" (no handoff)
    admission: str = ""

    def report(self, cluster: str) -> dict[str, Any]:
        return {
            "cluster": cluster,
            "result": self.result,
            "revision": self.revision,
            "error": self.error,
            "applied": len(self.detail.applied),
            "pruned": len(self.detail.pruned),
            "admission": self.admission,
            "at": int(time.time()),
        }


class SyncAgent:
    def __init__(
        self,
        *,
        cluster: str,
        group: str,
        site_class: str,
        source: BundleSource,
        keys: Mapping[str, ec.EllipticCurvePublicKey],
        kube: KubeTarget,
        state: AgentState,
        reporter: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
        revocations: RevocationStore | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.cluster = cluster
        self.group = group
        self.site_class = site_class
        self._source = source
        self._keys = keys
        self._kube = kube
        self.state = state
        self._reporter = reporter
        self._started = False
        self.last_contact: float | None = None
        self.revocations = revocations
        self._handoff = handoff
        self._handed_over = ""  # the revision last handed to the webhook
        if revocations is not None:
            source.hold_revocations(revocations.etag)

    def _wanted(self, bundle: Bundle) -> list[dict[str, Any]]:
        return desired(bundle.network_policies.get(self.site_class, []))

    async def start(self) -> SyncOutcome | None:
        """Enforce again what was accepted before a restart (current if its apply was cut short)."""
        current, good = self.state.current(), self.state.last_known_good()
        self._started = True
        if current is None:
            return None
        fallback = self._wanted(good) if good is not None and good.revision != current.revision else None
        return await self._apply(current, fallback)

    async def sync_once(self) -> SyncOutcome:
        carries = self._source.carries_reports
        try:
            fetched = await self._source.fetch(list(self.state.queued_reports()) if carries else [])
        except SourceRefusedError as exc:  # it answered: contact, but no; asking again unchanged will not help
            self.last_contact = time.time()
            return self._record(SyncOutcome(SyncResult.SOURCE_REFUSED, error=f"{exc.code}: {exc.diagnostics()}"))
        except BundleError as exc:
            retry_after = exc.retry_after if isinstance(exc, SourceUnreachableError) else None
            outcome = SyncOutcome(SyncResult.UNREACHABLE, error=f"{exc.code}: {exc.diagnostics()}")
            outcome.retry_after_s = retry_after
            return self._record(outcome)
        self.last_contact = time.time()
        if fetched.delivered:
            self.state.clear_reports()
        await self._sync_revocations()
        blob = fetched.bundle
        if blob is None:
            if not carries:
                await self.flush_reports()
            return SyncOutcome(SyncResult.NOT_MODIFIED)
        try:
            bundle = unpack(blob)
            signer = verify_bundle(bundle, self._keys)
            # before anything is recorded: another group's bundle must not move this cluster's rollback guard
            if bundle.group != self.group:
                raise BundleGroupError(
                    f"bundle {bundle.revision} is signed for cluster group {bundle.group!r}; this cluster is in "
                    f"group {self.group!r}: refused (a mirror or hub handing out another group's bundle)"
                )
            check_bundle(bundle)  # every site class and policy file, as the hub checked at publish
            current, good = self.state.current(), self.state.last_known_good()
            applied_before = good is not None and good.revision == bundle.revision
            if current is not None and current.revision == bundle.revision and (applied_before or self._started):
                # the bundle we already applied (fetched again, e.g. after a lost answer), or the one start()
                # re-applied after a restart: not a replay, and nothing to do (but a handoff that failed)
                outcome = SyncOutcome(SyncResult.UNCHANGED, bundle.revision)
                if self._handed_over != bundle.revision:
                    await self._hand_over(blob, bundle, outcome)
                return self._record(outcome)
            self.state.guard.check(bundle)
            wanted = self._wanted(bundle)  # validated before the guard moves
        except BundleError as exc:
            log.warning("bundle refused: %s", exc.diagnostics())
            return self._record(SyncOutcome(SyncResult.REFUSED, error=f"{exc.code}: {exc.diagnostics()}"))
        log.info("bundle %s verified (key %s), applying for site class %s", bundle.revision, signer, self.site_class)
        good = self.state.last_known_good()
        self.state.accept(blob, bundle)
        return await self._apply(bundle, self._wanted(good) if good is not None else None, wanted, blob=blob)

    async def _sync_revocations(self) -> None:
        """Take the hub's newer revocation list, if it announced one; a bad one is refused and reported."""
        if self.revocations is None:
            return
        try:
            found = await self._source.fetch_revocations()
            if found is None:
                return
            accepted = self.revocations.accept(*found)
        except BundleError as exc:
            log.warning("revocation list refused: %s", exc.diagnostics())
            self._record(SyncOutcome(SyncResult.REVOCATIONS_REFUSED, error=f"{exc.code}: {exc.diagnostics()}"))
            return
        self._source.hold_revocations(self.revocations.etag)
        log.info("revocation list %s: %d SPIFFE IDs revoked", accepted.revision, len(accepted.spiffe_ids))

    async def _apply(
        self,
        bundle: Bundle,
        fallback: list[dict[str, Any]] | None,
        wanted: list[dict[str, Any]] | None = None,
        *,
        blob: bytes | None = None,
    ) -> SyncOutcome:
        try:
            detail = await apply_with_rollback(self._kube, wanted or self._wanted(bundle), fallback)
        except BundleError as exc:
            return self._record(SyncOutcome(SyncResult.FAILED, bundle.revision, f"{exc.code}: {exc.diagnostics()}"))
        self.state.mark_good()
        result = SyncResult.APPLIED if detail.applied or detail.pruned else SyncResult.UNCHANGED
        outcome = SyncOutcome(result, bundle.revision, detail=detail)
        if blob is not None:
            await self._hand_over(blob, bundle, outcome)
        return self._record(outcome)

    async def _hand_over(self, blob: bytes, bundle: Bundle, outcome: SyncOutcome) -> None:
        """The applied bundle to the webhook replicas (syncer/handoff.py); a failure is reported, not undone."""
        if self._handoff is None:
            return
        try:
            await self._handoff.publish(blob, bundle)
        except BundleError as exc:
            log.warning("bundle %s not handed to the webhook: %s", bundle.revision, exc.diagnostics())
            outcome.admission = f"failed: {exc.code}: {exc.diagnostics()}"
            return
        self._handed_over = bundle.revision
        outcome.admission = "handed-over"

    def _record(self, outcome: SyncOutcome) -> SyncOutcome:
        self.state.queue_report(outcome.report(self.cluster))
        return outcome

    async def flush_reports(self) -> None:
        """Deliver what was queued (also while offline); kept for the next contact if the hub is unreachable."""
        reports = list(self.state.queued_reports())
        if not reports or self._reporter is None:
            return
        try:
            await self._reporter(reports)
        except BundleError as exc:
            log.info("status reports kept for later: %s", exc)
            return
        self.state.clear_reports()

    async def run_once(self) -> SyncOutcome:
        """One sync and the reports it produced sent: at once through the reporter, or, for the hub's own
        source, on the next poll, which the agent's loop makes at once (call flush_reports before exiting)."""
        outcome = await self.sync_once()
        if outcome.result is not SyncResult.UNREACHABLE and not self._source.carries_reports:
            await self.flush_reports()
        return outcome


#: the longest wait between two tries. The cap decides how long a fleet takes to come back after an outage: past a
#: few failures every syncer draws from [0, cap], so the last returns up to a cap after the hub (and only then
#: gets the bundles and revocation list published meanwhile). 60 s put the last of 500 simulated clusters back
#: 70 s after a 60 s outage (bench_reconnect_storm); 15 s keeps a whole fleet's return within the storm goal
#: (<= 30 s), for 10,000 clusters about 1,300 tries a second while the hub is down, each refused by the balancer
#: at once. A busy hub's Retry-After still holds them back (up to the cap).
RETRY_CAP_S = 15.0


def run_backoff() -> Backoff:
    """The run loop's retry policy: full jitter from 1 s up to RETRY_CAP_S (the shared module, so 10,000 syncers
    that lost the hub together do not come back together)."""
    return Backoff(base_s=1.0, cap_s=RETRY_CAP_S)


async def pace(outcome: SyncOutcome, backoff: Backoff) -> float | None:
    """After one sync of a run loop: an unreachable or refusing source is waited out at the backoff's pace (the
    hub's Retry-After obeyed), and the seconds waited are returned; after contact the backoff starts again from
    its smallest window, and None says to sync again at once. A refusal is retried too (the fleet file may be
    fixed), never busily."""
    if outcome.result in (SyncResult.UNREACHABLE, SyncResult.SOURCE_REFUSED):
        return await backoff.wait(outcome.retry_after_s)
    backoff.reset()
    return None
