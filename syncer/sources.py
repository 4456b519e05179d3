"""Where the syncer's bundles come from: the transports under the sync algorithm (syncer/agent.py), each a
`BundleSource`: the hub's long poll (status reports and the revocation list ride on it), an OCI registry
mirror near the site, a bundle file. Nothing a source returns is trusted: the agent verifies it all.

The hub is spoken to through edgetrust/_internal/hubclient.py (aiohttp, bounded reads); its failures become
this package's errors here, by what they mean for the next try (nothing is applied in any case, the last
known good kept):
- no answer, a timeout, 429 or 5xx (with the hub's Retry-After): `SourceUnreachableError`, retried with backoff;
- 401/403, the hub refusing this cluster (not in the fleet file, revoked): `SourceRefusedError` with the hub's
  reason; a registry mirror refusing the credentials likewise;
- any other 4xx, the request itself wrong (a group with nothing published, an artifact the mirror does not
  hold): `SourceRequestError`, with the source's message;
- an answer over the bound `OversizedAnswerError`.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetrust._internal import hubclient
from edgetrust._internal.bounded import CHUNK_BYTES, BoundedReadError, read_bounded
from edgetrust._internal.hubclient import HubCallError, HubFailure
from edgetrust.bundles.errors import (
    BundleError,
    OversizedAnswerError,
    SourceRefusedError,
    SourceRequestError,
    SourceUnreachableError,
)
from edgetrust.bundles.format import MAX_BUNDLE_BYTES
from edgetrust.bundles.oci import BundleRegistry, OCIAuthError, OCIError, OCIReference
from edgetrust.oci import errors as registry_errors
from syncer.agent import Fetched

if TYPE_CHECKING:
    import aiohttp

REVOCATIONS_HEADER = "X-Edgetrust-Revocations"  # trustd/server/api/policy.py sends it; the value is an ETag
#: the largest answer the agent reads from the hub (a bundle, or the revocation list); past it, it stops reading
MAX_ANSWER_BYTES = MAX_BUNDLE_BYTES


def hub_session(base_url: str, context: ssl.SSLContext) -> aiohttp.ClientSession:
    """The agent's one keep-alive mTLS connection to the hub (`context` holds the cluster's SVID)."""
    return hubclient.session(base_url, context, limit=1)


def _syncer_error(exc: HubCallError) -> BundleError:
    """A hub call's failure as this package's error (see the module doc for what each means)."""
    if exc.failure is HubFailure.BAD_ANSWER:
        return OversizedAnswerError(str(exc))
    if exc.failure is HubFailure.REFUSED and exc.status in (401, 403):
        return SourceRefusedError(f"the hub refused this cluster: {exc.reason}", reason=exc.reason)
    if exc.failure in (HubFailure.REFUSED, HubFailure.BAD_INPUT, HubFailure.CONFLICT):
        return SourceRequestError(str(exc), reason=exc.reason)
    return exc.convert(unreachable=SourceUnreachableError, otherwise=SourceUnreachableError)


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, *, timeout_s: float, **kwargs: Any
) -> hubclient.Answer:
    try:
        return await hubclient.fetch(session, method, url, timeout_s=timeout_s, limit=MAX_ANSWER_BYTES, **kwargs)
    except HubCallError as exc:
        raise _syncer_error(exc) from exc


def _refused(answer: hubclient.Answer, url: str, action: str) -> BundleError:
    """An answer other than the ones the protocol expects: nothing applied; the error says whether to retry."""
    return _syncer_error(hubclient.failure_of(answer.status, answer.headers, answer.body, f"{action} ({url})"))


def hub_reporter(url: str, session: aiohttp.ClientSession) -> Callable[[list[dict[str, Any]]], Awaitable[None]]:
    """Status reports sent on their own (for a source that does not carry them: a mirror, a file)."""

    async def send(reports: list[dict[str, Any]]) -> None:
        answer = await _call(session, "POST", url, json=reports, timeout_s=30)
        if answer.status != 200:
            raise _refused(answer, url, "status report")

    return send


def hub_node_status(url: str, session: aiohttp.ClientSession) -> Callable[[], Awaitable[bytes]]:
    """The cluster's signed node attestation document (syncer/nodestatus.py verifies it)."""

    async def fetch() -> bytes:
        answer = await _call(session, "GET", url, timeout_s=30)
        if answer.status != 200:
            raise _refused(answer, url, "node attestation status")
        return answer.body

    return fetch


class HubSource:
    """The hub's bundle endpoint (mTLS with the cluster's SVID), long-polled with ETag / If-None-Match, so an
    idle poll costs a 304 and a few hundred bytes every `wait_s`. Status reports ride on the poll (one round
    trip per sync, not two), and the answer announces the hub's revocation list."""

    carries_reports = True

    def __init__(
        self,
        url: str,
        client: aiohttp.ClientSession,
        *,
        wait_s: float = 30.0,
        revocations_url: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._url = url
        self._client = client
        self._etag: str | None = None
        self._wait = wait_s
        self._timeout = timeout_s if timeout_s is not None else wait_s + 10
        self._revocations_url = revocations_url
        #: the hub's current revocation list (its ETag) as the last answer announced it
        self._announced: str | None = None
        #: the list the agent holds; the one it last tried (sent, so the hub wakes it only for a newer one)
        self._held: str | None = None
        self._tried: str | None = None

    def hold_revocations(self, etag: str | None) -> None:
        self._held = self._tried = etag

    async def fetch(self, reports: Sequence[Mapping[str, Any]]) -> Fetched:
        headers = {"If-None-Match": self._etag} if self._etag else {}
        if self._revocations_url is not None:
            headers[REVOCATIONS_HEADER] = self._tried or self._held or "none"
        params = {"wait": str(self._wait)}
        timeout_s = self._timeout
        if reports:
            answer = await _call(
                self._client, "POST", self._url, headers=headers, params=params, json={"reports": list(reports)},
                timeout_s=timeout_s,
            )  # fmt: skip
        else:
            answer = await _call(self._client, "GET", self._url, headers=headers, params=params, timeout_s=timeout_s)
        if answer.status not in (200, 204, 304):
            raise _refused(answer, self._url, "bundle poll")
        self._announced = answer.headers.get(REVOCATIONS_HEADER)
        if answer.status != 200:
            return Fetched(None, delivered=len(reports))
        self._etag = answer.headers.get("etag")
        return Fetched(answer.body, delivered=len(reports))

    async def fetch_revocations(self) -> tuple[bytes, str | None] | None:
        """The hub's signed revocation list, when the last answer said it moved past the one held."""
        if self._revocations_url is None or self._announced in (None, self._held):
            return None
        # tried even if it fails: a refused list must not turn the long poll into a busy loop; it is fetched
        # again on every later poll, and at once when the hub announces another
        self._tried = self._announced
        answer = await _call(self._client, "GET", self._revocations_url, timeout_s=30)
        if answer.status != 200:
            raise _refused(answer, self._revocations_url, "revocation list")
        return answer.body, answer.headers.get("etag")


class _PulledSource:
    """A source that only hands out bundles: reports go through the agent's reporter, no revocation list."""

    carries_reports = False

    def hold_revocations(self, etag: str | None) -> None:
        return None

    async def fetch_revocations(self) -> tuple[bytes, str | None] | None:
        return None

    async def fetch(self, reports: Sequence[Mapping[str, Any]]) -> Fetched:
        return Fetched(await self._pull())

    async def _pull(self) -> bytes | None:
        raise NotImplementedError


class FileSource(_PulledSource):
    """A bundle file (e.g. delivered by a registry mirror or USB stick); 'changed' by content."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: str | None = None

    async def _pull(self) -> bytes | None:
        try:  # bounded like every other source: a file dropped by a mirror is no more trusted than its answer
            with self._path.open("rb") as handle:
                blob = read_bounded(
                    iter(lambda: handle.read(CHUNK_BYTES), b""), f"bundle file {self._path}", limit=MAX_BUNDLE_BYTES
                )
        except BoundedReadError as exc:
            raise OversizedAnswerError(str(exc)) from exc
        except OSError as exc:
            raise SourceUnreachableError(f"bundle file {self._path}: {exc}") from exc
        digest = hashlib.sha256(blob).hexdigest()
        if digest == self._seen:
            return None
        self._seen = digest
        return blob


class OCISource(_PulledSource):
    """A bundle published as an OCI artifact (a registry mirror near the site); 'changed' by manifest digest.
    A thin adapter: the registry client is edgetrust/bundles/oci.py's."""

    def __init__(self, registry: BundleRegistry, reference: OCIReference) -> None:
        self._registry = registry
        self._reference = reference
        self._seen: str | None = None

    async def _pull(self) -> bytes | None:
        # an OCIError keeps its own code (oci_error, mirror_answer_refused...) in the report; a mirror that
        # refused the credentials, or holds no such artifact, is said as a refusal, not as an outage
        try:
            blob, digest = await self._registry.pull(self._reference)
        except OCIAuthError as exc:
            raise SourceRefusedError(f"the registry mirror refused this syncer: {exc}", code=exc.code) from exc
        except OCIError as exc:
            if isinstance(exc.__cause__, registry_errors.ManifestNotFoundError):
                raise SourceRequestError(
                    f"the registry mirror has no {self._reference.registry}/{self._reference.repository}:"
                    f"{self._reference.tag} (check --bundle-oci): {exc}",
                    code="mirror_not_found",
                ) from exc
            raise
        if digest == self._seen:
            return None
        self._seen = digest
        return blob
