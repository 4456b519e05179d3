"""The per-cluster syncer: fetch, verify, refuse anything not newer, apply all-or-nothing, report.

Order matters for safety: nothing from a fetched bundle is used before its signature verifies; the rollback
guard moves before anything is applied; the last known good bundle is replaced only after a complete apply.
At start the agent re-applies what it last accepted, from disk, so a restart during a partition keeps the
cluster enforcing the newest policies it ever verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from syncer.apply import ApplyResult, apply_with_rollback, desired
from syncer.bundle import Bundle, unpack
from syncer.errors import SyncerError
from syncer.kube import KubeTarget
from syncer.oci import BundleRegistry, OCIError, OCIReference
from syncer.signing import verify_bundle
from syncer.state import AgentState

log = logging.getLogger("edgetrust.syncer")


class SourceUnreachableError(SyncerError):
    code = "hub_unreachable"


def hub_reporter(url: str, client: httpx.AsyncClient) -> Callable[[list[dict[str, Any]]], Awaitable[None]]:
    async def send(reports: list[dict[str, Any]]) -> None:
        answer = await client.post(url, json=reports)
        if answer.status_code != 200:
            raise SourceUnreachableError(f"{url}: the hub answered {answer.status_code}")

    return send


class BundleSource(Protocol):
    async def fetch(self) -> bytes | None:
        """The newest bundle, or None when it has not changed since the last fetch."""


class FileSource:
    """A bundle file (e.g. delivered by a registry mirror or USB stick); 'changed' by content."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: str | None = None

    async def fetch(self) -> bytes | None:
        try:
            blob = self._path.read_bytes()
        except OSError as exc:
            raise SourceUnreachableError(f"bundle file {self._path}: {exc}") from exc
        digest = hashlib.sha256(blob).hexdigest()
        if digest == self._seen:
            return None
        self._seen = digest
        return blob


class HTTPSource:
    """The hub's bundle endpoint (mTLS with the cluster's SVID), long-polled with ETag / If-None-Match, so an
    idle poll costs a 304 and a few hundred bytes every `wait_s`."""

    def __init__(self, url: str, client: httpx.AsyncClient, *, wait_s: float = 30.0) -> None:
        self._url = url
        self._client = client
        self._etag: str | None = None
        self._wait = wait_s

    async def fetch(self) -> bytes | None:
        headers = {"If-None-Match": self._etag} if self._etag else {}
        try:
            answer = await self._client.get(
                self._url, headers=headers, params={"wait": str(self._wait)}, timeout=self._wait + 10
            )
        except httpx.HTTPError as exc:
            raise SourceUnreachableError(f"{self._url}: {exc}") from exc
        if answer.status_code in (204, 304):
            return None
        if answer.status_code != 200:
            raise SourceUnreachableError(f"{self._url}: the hub answered {answer.status_code}")
        self._etag = answer.headers.get("etag")
        return answer.content


class OCISource:
    """A bundle published as an OCI artifact (a registry mirror near the site); 'changed' by manifest digest."""

    def __init__(self, registry: BundleRegistry, reference: OCIReference) -> None:
        self._registry = registry
        self._reference = reference
        self._seen: str | None = None

    async def fetch(self) -> bytes | None:
        try:
            blob, digest = await asyncio.to_thread(self._registry.pull, self._reference)
        except OCIError as exc:
            raise SourceUnreachableError(str(exc)) from exc
        if digest == self._seen:
            return None
        self._seen = digest
        return blob


@dataclass(slots=True)
class SyncOutcome:
    result: str  # applied, unchanged, not-modified, refused, failed, unreachable
    revision: str = ""
    error: str = ""
    detail: ApplyResult = field(default_factory=ApplyResult)

    def report(self, cluster: str) -> dict[str, Any]:
        return {
            "cluster": cluster,
            "result": self.result,
            "revision": self.revision,
            "error": self.error,
            "applied": len(self.detail.applied),
            "pruned": len(self.detail.pruned),
            "at": int(time.time()),
        }


class SyncAgent:
    def __init__(
        self,
        *,
        cluster: str,
        site_class: str,
        source: BundleSource,
        keys: Mapping[str, ec.EllipticCurvePublicKey],
        kube: KubeTarget,
        state: AgentState,
        reporter: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
    ) -> None:
        self.cluster = cluster
        self.site_class = site_class
        self._source = source
        self._keys = keys
        self._kube = kube
        self.state = state
        self._reporter = reporter
        self._started = False
        self.last_contact: float | None = None

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
        try:
            blob = await self._source.fetch()
        except SyncerError as exc:
            return self._record(SyncOutcome("unreachable", error=exc.diagnostics()))
        self.last_contact = time.time()
        if blob is None:
            await self.flush_reports()
            return SyncOutcome("not-modified")
        try:
            bundle = unpack(blob)
            signer = verify_bundle(bundle, self._keys)
            current, good = self.state.current(), self.state.last_known_good()
            applied_before = good is not None and good.revision == bundle.revision
            if current is not None and current.revision == bundle.revision and (applied_before or self._started):
                # the bundle we already applied (fetched again, e.g. after a lost answer), or the one start()
                # re-applied after a restart: not a replay, and nothing to do
                return self._record(SyncOutcome("unchanged", bundle.revision))
            self.state.guard.check(bundle)
            wanted = self._wanted(bundle)  # validated before the guard moves
        except SyncerError as exc:
            log.warning("bundle refused: %s", exc.diagnostics())
            return self._record(SyncOutcome("refused", error=f"{exc.code}: {exc.diagnostics()}"))
        log.info("bundle %s verified (key %s), applying for site class %s", bundle.revision, signer, self.site_class)
        good = self.state.last_known_good()
        self.state.accept(blob, bundle)
        return await self._apply(bundle, self._wanted(good) if good is not None else None, wanted)

    async def _apply(
        self, bundle: Bundle, fallback: list[dict[str, Any]] | None, wanted: list[dict[str, Any]] | None = None
    ) -> SyncOutcome:
        try:
            detail = await apply_with_rollback(self._kube, wanted or self._wanted(bundle), fallback)
        except SyncerError as exc:
            return self._record(SyncOutcome("failed", bundle.revision, f"{exc.code}: {exc.diagnostics()}"))
        self.state.mark_good()
        result = "applied" if detail.applied or detail.pruned else "unchanged"
        return self._record(SyncOutcome(result, bundle.revision, detail=detail))

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
        except (SyncerError, httpx.HTTPError) as exc:
            log.info("status reports kept for later: %s", exc)
            return
        self.state.clear_reports()

    async def run_once(self) -> SyncOutcome:
        """One sync and the reports it produced delivered: the agent's loop body."""
        outcome = await self.sync_once()
        if outcome.result != "unreachable":
            await self.flush_reports()
        return outcome
