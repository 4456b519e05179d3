"""HTTP surface of policy distribution. Every caller is identified by the SPIFFE ID of its X.509-SVID (mTLS):
clusters as spiffe://<trust domain>/cluster/<name>, publishers as listed in the fleet file; who may call what is
declared per route (`trustd.server.api.authz`), revocation included.

Query parameters are bounded and finite (`wait=nan` or `inf` is bad input, not a server error)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from trustd.errors import BadRequestError, TrustdError
from trustd.server.api import authz
from trustd.server.api.authz import Authorizer, Caller
from trustd.server.policy.clusterstatus import REPLICA_HEARTBEAT_S, ReplicaReport
from trustd.server.policy.distribution import PolicyBundles

MAX_BUNDLE_BYTES = 8 * 1024 * 1024
MAX_WAIT_S = 60.0
#: group names as the fleet file spells them; anything longer names no group
MAX_GROUP_NAME = 253
#: a long poll's wait in seconds: finite, 0..MAX_WAIT_S (FastAPI refuses nan and inf against these bounds)
Wait = Annotated[float, Query(ge=0.0, le=MAX_WAIT_S, allow_inf_nan=False)]
GroupName = Annotated[str, Path(min_length=1, max_length=MAX_GROUP_NAME)]
#: an admission replica's report is a few hundred bytes; a longer body is refused, never cut
MAX_ADMISSION_REPORT_BYTES = 16 * 1024
#: its fields' bounds (a failure longer than this is the replica's bug: refused, and said)
MAX_POD_NAME = 253
MAX_REVISION = 200
MAX_FAILURE = 4000
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
#: on every bundle answer: the ETag of the current revocation list; the agent fetches the list when it moved
REVOCATIONS_HEADER = "X-Edgetrust-Revocations"


class NotAuthorizedError(TrustdError):
    code = "not_authorized"


class PolicyRequestError(BadRequestError):
    """A cluster's or publisher's request that is not what the protocol says (not JSON, too many reports)."""

    code = "bad_policy_request"


async def _json_body(request: Request, what: str) -> Any:
    try:
        return await request.json()
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than the parser goes
        raise PolicyRequestError(f"{what} must be JSON: {str(exc)[:200]}") from exc


def _cluster_is_the_callers(report: Any, cluster: str) -> None:
    """A report that names a cluster must name the caller's own (its SVID's): no member reports for another."""
    named = report.get("cluster") if isinstance(report, dict) else None
    if named is not None and named != cluster:
        raise NotAuthorizedError(
            f"a report for cluster {str(named)[:64]!r} from {cluster!r}: only its own identity reports for a cluster"
        )


def replica_report(body: bytes, cluster: str) -> ReplicaReport:
    """An admission replica's report, checked field by field (bounds refuse, never cut)."""
    if len(body) > MAX_ADMISSION_REPORT_BYTES:
        raise PolicyRequestError(f"an admission report is limited to {MAX_ADMISSION_REPORT_BYTES} bytes")
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PolicyRequestError(f"an admission report must be JSON: {str(exc)[:200]}") from exc
    if not isinstance(raw, dict):
        raise PolicyRequestError("an admission report must be a JSON object")
    _cluster_is_the_callers(raw, cluster)
    unknown = sorted(
        set(raw) - {"cluster", "pod", "revision", "counter", "swaps", "last_failure", "last_failed_revision"}
    )
    if unknown:
        raise PolicyRequestError(f"an admission report has no field {unknown[0][:64]!r}")
    pod = raw.get("pod")
    if not isinstance(pod, str) or len(pod) > MAX_POD_NAME or not _POD_NAME.match(pod):
        raise PolicyRequestError("pod: a Kubernetes pod name (lower-case DNS subdomain, at most 253 characters)")
    texts = {}
    for name, limit in (
        ("revision", MAX_REVISION),
        ("last_failure", MAX_FAILURE),
        ("last_failed_revision", MAX_REVISION),
    ):
        value = raw.get(name, "")
        if not isinstance(value, str) or len(value) > limit:
            raise PolicyRequestError(f"{name}: a string of at most {limit} characters")
        texts[name] = value
    numbers = {}
    for name, least in (("counter", -1), ("swaps", 0)):
        value = raw.get(name, least)
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value < 2**63:
            raise PolicyRequestError(f"{name}: an integer from {least} to 2**63 - 1")
        numbers[name] = value
    return ReplicaReport(
        pod=pod,
        revision=texts["revision"],
        counter=numbers["counter"],
        swaps=numbers["swaps"],
        last_failure=texts["last_failure"],
        last_failed_revision=texts["last_failed_revision"],
    )


def _revocation_headers(bundles: PolicyBundles) -> dict[str, str]:
    if bundles.revocations is None:
        return {}
    return {REVOCATIONS_HEADER: bundles.revocations.current().etag}


async def poll_answer(
    bundles: PolicyBundles, cluster: str, etag: str | None, wait: float, seen_revocations: str | None
) -> Response:
    """A cluster's poll answered: its bundle when it differs from `etag` (200), else, after up to `wait` seconds,
    304 (or 204 when nothing is released to it yet); every answer carries the revocation list's ETag."""
    found = await bundles.wait_for_change(cluster, etag, wait, seen_revocations)
    if found is None:
        current = bundles.bundle_for(cluster)
        if current is None:  # nothing released to this cluster yet
            return Response(status_code=204, headers=_revocation_headers(bundles))
        return Response(status_code=304, headers={"ETag": current[1], **_revocation_headers(bundles)})
    blob, new_etag = found
    return Response(blob, media_type="application/gzip", headers={"ETag": new_etag, **_revocation_headers(bundles)})


#: the query of an idle poll as the syncer sends it (`wait=20`, `wait=30.0`): what the fast path answers itself
_PLAIN_WAIT = re.compile(rb"^wait=([0-9]{1,2}(?:\.[0-9]{1,3})?)$")


class PollFastPath:
    """ASGI in front of the app: a cluster's GET /v1/policy/bundle (the idle long poll, 10,000 clusters every
    `wait` seconds) answered without FastAPI's routing and dependency layers, which were most of the hub's CPU
    per idle poll (fleet_sim). Only the plain case is taken: a GET whose query is one `wait=` number within
    0..MAX_WAIT_S, from a caller the route's rule (`authz.CLUSTER`) admits through the same `Authorizer`, answered
    by the same `poll_answer`. Anything else (a bad `wait`, a refused caller, a POST carrying reports) goes
    through the app unchanged, which answers it as before: this path never answers an error of its own."""

    PATH = "/v1/policy/bundle"

    def __init__(self, app: ASGIApp, bundles: PolicyBundles, authorizer: Authorizer) -> None:
        self._app = app
        self._bundles = bundles
        self._authorizer = authorizer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "GET":
            await self._app(scope, receive, send)
            return
        plain = _PLAIN_WAIT.match(scope.get("query_string", b""))
        wait = float(plain.group(1)) if plain else -1.0
        if not 0.0 <= wait <= MAX_WAIT_S:
            await self._app(scope, receive, send)
            return
        try:
            await self._authorizer.settle(scope)
            caller = self._authorizer.check(scope, authz.CLUSTER)
        except TrustdError:  # the app refuses it, in the hub's one error shape
            await self._app(scope, receive, send)
            return
        etag = seen = None
        for name, value in scope["headers"]:
            if name == b"if-none-match" and etag is None:
                etag = value.decode("latin-1")
            elif name == _REVOCATIONS_KEY and seen is None:
                seen = value.decode("latin-1")
        answer = await poll_answer(self._bundles, caller.cluster, etag, wait, seen)
        await answer(scope, receive, send)


_REVOCATIONS_KEY = REVOCATIONS_HEADER.lower().encode()


def policy_router(bundles: PolicyBundles, authorizer: Authorizer) -> APIRouter:
    router = APIRouter(prefix="/v1/policy")
    cluster_rule = authorizer.require(authz.CLUSTER)
    publisher_rule = authorizer.require(authz.GROUP_PUBLISHER)
    rollout_reader = authorizer.require(authz.ROLLOUT_READER)

    def revocation_headers() -> dict[str, str]:
        return _revocation_headers(bundles)

    def take_reports(cluster: str, reports: Any) -> int:
        if not isinstance(reports, list) or len(reports) > 1000:
            raise PolicyRequestError("status must be a list of at most 1000 reports")
        for report in reports:
            _cluster_is_the_callers(report, cluster)
        for report in reports:
            if isinstance(report, dict):
                bundles.report(cluster, report)
        return len(reports)

    @router.post("/bundle")
    async def poll_with_reports(request: Request, caller: Caller = cluster_rule, wait: Wait = 0.0) -> Response:
        """The agent's poll carrying its queued status reports: one round trip per sync instead of two."""
        cluster = caller.cluster
        body = await _json_body(request, "a poll's body")
        take_reports(cluster, body.get("reports") if isinstance(body, dict) else None)
        return await answer_poll(request, cluster, wait)

    @router.get("/bundle")
    async def bundle(request: Request, caller: Caller = cluster_rule, wait: Wait = 0.0) -> Response:
        return await answer_poll(request, caller.cluster, wait)

    async def answer_poll(request: Request, cluster: str, wait: float) -> Response:
        etag = request.headers.get("if-none-match")
        seen_revocations = request.headers.get(REVOCATIONS_HEADER.lower())
        return await poll_answer(bundles, cluster, etag, wait, seen_revocations)

    @router.get("/revocations")
    async def revocations(request: Request, _caller: Caller = cluster_rule) -> Response:
        """The hub-signed revocation bundle (OPA format, root edgetrust/revocations)."""
        if bundles.revocations is None:
            return Response(status_code=404)
        signed = bundles.revocations.current()
        if request.headers.get("if-none-match") == signed.etag:
            return Response(status_code=304, headers={"ETag": signed.etag})
        return Response(signed.blob, media_type="application/gzip", headers={"ETag": signed.etag})

    @router.post("/status")
    async def status(request: Request, caller: Caller = cluster_rule) -> dict[str, int]:
        cluster = caller.cluster
        reports = await _json_body(request, "status")
        accepted = take_reports(cluster, reports)
        return {"accepted": accepted}

    @router.post("/admission")
    async def admission(request: Request, caller: Caller = cluster_rule) -> dict[str, Any]:
        """An admission webhook replica of the caller's cluster says what it enforces (on a change, and as a
        heartbeat); the rollout counts the cluster applied once its NetworkPolicies and every live replica are."""
        bundles.report_replica(caller.cluster, replica_report(await request.body(), caller.cluster))
        return {"accepted": 1, "heartbeat_s": REPLICA_HEARTBEAT_S}

    @router.post("/bundles/{group}")
    async def publish(group: GroupName, request: Request, _caller: Caller = publisher_rule) -> dict[str, Any]:
        blob = await request.body()
        if len(blob) > MAX_BUNDLE_BYTES:
            raise PolicyRequestError(f"bundles are limited to {MAX_BUNDLE_BYTES} bytes")
        return (await bundles.publish_off_loop(group, blob, publisher=_caller.spiffe_id)).view()

    @router.get("/rollouts/{group}")
    async def rollout(group: GroupName, _caller: Caller = rollout_reader) -> JSONResponse:
        found = bundles.rollout_view(group)
        if found is None:
            return JSONResponse({"error": "no_rollout", "reason": f"nothing published to {group!r}"}, status_code=404)
        return JSONResponse(found)

    return router
