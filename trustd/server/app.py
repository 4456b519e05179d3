"""trustd's HTTP surface: enrollment and the trust bundle, over TLS.

Verification lives in `EnrollmentService`; this module only maps HTTP to it and errors to answers a person
can act on (`{"error": code, "reason": text}`), never to a stack trace. Errors map to statuses in one place
(`error_answer`), by class: a refusal is 403, bad input 400, a conflict 409, an outage of the store or a peer
503 with `Retry-After`, so a client tells "no" from "not now". Who may call which route is `trustd.server.api.authz`;
the app refuses to build when a route declares no rule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attestation.errors import AttestationError, MalformedStructureError, UnsupportedAlgorithmError
from edgetrust._internal import asgi_body
from edgetrust.protocol import ChallengeRequest, ChallengeResponse, EnrollRequest, EnrollResponse
from edgetrust.spiffe.id import ReservedNames
from trustd.errors import StoreError, TrustdError, UnavailableError
from trustd.server.api import authz
from trustd.server.api.agent import SvidFastPath, agent_router
from trustd.server.api.authz import Authorizer, Caller
from trustd.server.api.clusters import cluster_router
from trustd.server.api.fleet import fleet_router
from trustd.server.api.policy import PollFastPath, policy_router
from trustd.server.ca import SpiffeCA
from trustd.server.ca import rotation as ca_rotation
from trustd.server.enrollment import EnrollmentService
from trustd.server.federation import Federation
from trustd.server.nodestatus import NodeAttestations
from trustd.server.policy.distribution import PolicyBundles
from trustd.server.renewal import RenewalService
from trustd.server.revocations import Revocations
from trustd.server.store import Store, off_loop

log = logging.getLogger(__name__)

#: the largest legitimate body is an enrollment carrying a big event log (see api_models)
MAX_BODY_BYTES = 6 * 1024 * 1024
#: Retry-After of an answer to an unexpected failure
UNEXPECTED_RETRY_S = 5


def create_app(
    *,
    service: EnrollmentService,
    ca: SpiffeCA,
    store: Store,
    revocations: Revocations,
    operators: frozenset[str] = frozenset(),
    reserved: ReservedNames,
    policy: PolicyBundles | None = None,
    jwt_svid_ttl: timedelta = timedelta(minutes=5),
    federation: Federation | None = None,
    ca_directory: Path | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watchers = [asyncio.create_task(revocations.watch())]
        if ca_directory is not None:
            watchers.append(asyncio.create_task(ca_rotation.watch(ca, ca_directory)))
        if federation is not None:
            watchers.append(asyncio.create_task(federation.watch()))
        if policy is not None:
            watchers.append(asyncio.create_task(policy.clusters.keep_flushed()))
            watchers.append(asyncio.create_task(policy.keep_synced()))
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            if policy is not None:
                try:  # what the last second of reports changed
                    await off_loop(store, policy.clusters.flush)
                    await off_loop(store, policy.flush)
                except StoreError as exc:
                    log.warning("cluster status or rollout progress not written at shutdown: %s", exc.diagnostics())

    # no /openapi.json route: every route has an authorization rule, and the schema is no one's business but
    # the tests' (which read `app.openapi()`)
    app = FastAPI(title="trustd", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    authorizer = Authorizer(
        trust_domain=ca.trust_domain, store=store, revocations=revocations, operators=operators, policy=policy
    )
    public = authorizer.require(authz.PUBLIC)
    if policy is not None:
        # first: Starlette matches routes in order, and 10,000 clusters' polls are the hot path
        app.include_router(policy_router(policy, authorizer))
    app.include_router(fleet_router(store, revocations, authorizer, policy, ca.trust_domain, reserved))
    nodes = NodeAttestations(store, revocations, policy, ca.trust_domain) if policy is not None else None
    app.include_router(cluster_router(store, authorizer, policy, ca.trust_domain, nodes))
    renewal = RenewalService(
        store=store,
        ca=ca,
        reference_policy=service.reference_policy,
        revocations=revocations,
        svid_ttl=service.policy.svid_ttl,
        challenge_ttl=service.policy.challenge_ttl,
    )
    agent_api = agent_router(
        store,
        ca,
        revocations,
        renewal,
        authorizer=authorizer,
        reserved=reserved,
        jwt_ttl=jwt_svid_ttl,
        federation=federation,
    )
    app.include_router(agent_api)

    @app.exception_handler(AttestationError)
    async def attestation_refused(request: Request, exc: AttestationError) -> JSONResponse:
        return error_answer(request, exc)

    @app.exception_handler(TrustdError)
    async def trustd_refused(request: Request, exc: TrustdError) -> JSONResponse:
        return error_answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # the request does not fit the route's schema (a field, a query parameter such as wait=nan): 422, in the
        # hub's one error shape, like the SVID fast path's
        return _error(422, "invalid_request", _validation_reason(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_answer(request, exc)

    # Enrollment is a few milliseconds of CPU under the GIL: with SQLite, run it on the event loop rather than
    # hopping to a worker thread, which costs more than it overlaps (measured: 7.0 -> 5.75 ms trustd CPU per
    # enrollment); with PostgreSQL, on a worker thread, as its store calls wait on the network (`off_loop`).
    @app.post("/v1/enroll/challenge")
    async def enroll_challenge(body: ChallengeRequest, request: Request, _caller: Caller = public) -> ChallengeResponse:
        source = request.client.host if request.client else ""
        return await off_loop(store, lambda: service.begin(body, source=source))

    @app.post("/v1/enroll/complete")
    async def enroll_complete(body: EnrollRequest, request: Request, _caller: Caller = public) -> EnrollResponse:
        source = request.client.host if request.client else ""
        return await off_loop(store, lambda: service.complete(body, source=source))

    @app.get("/v1/bundle")
    def spiffe_bundle(_caller: Caller = public) -> dict[str, Any]:
        """The trust domain's bundle in SPIFFE bundle format (a JWKS)."""
        return ca.bundle()

    @app.get("/v1/bundle.pem")
    def x509_authorities(_caller: Caller = public) -> Response:
        return Response(ca.x509_authorities_pem(), media_type="application/x-pem-file")

    @app.get("/healthz")
    async def healthz(_caller: Caller = public) -> dict[str, str]:  # async: never queued behind store calls
        return {"status": "ok"}

    authz.check_routes(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(
        SvidFastPath,
        authorizer=authorizer,
        issue=agent_api.issue_svids,  # type: ignore[attr-defined]
        store=store,
        key_in_memory=ca.key_in_memory,
    )
    if policy is not None:
        app.add_middleware(PollFastPath, bundles=policy, authorizer=authorizer)
    return app


def error_answer(request: Request, exc: Exception) -> JSONResponse:
    """The one mapping from an error to an answer, by class (`TrustdError.status`).

    An exception no boundary converted is a defect of the hub, not a verdict about the caller: it is logged with
    its trace and answered 503 "internal" (retry, nothing decided), never a 500 with a stack trace and never a
    403 that would read as a refusal."""
    if isinstance(exc, AttestationError):
        status = 400 if isinstance(exc, MalformedStructureError | UnsupportedAlgorithmError) else 403
        return _error(status, exc.code, exc.diagnostics())
    if isinstance(exc, UnavailableError):
        log.warning("%s %s: unavailable: %s", request.method, request.url.path, exc.diagnostics())
        return _error(exc.status, exc.code, exc.diagnostics(), retry_after_s=exc.retry_after_s)
    if isinstance(exc, TrustdError):
        return _error(exc.status, exc.code, exc.diagnostics())
    log.error("%s %s: unexpected %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
    return _error(
        503, "internal", "trustd failed unexpectedly; nothing was decided, try again", retry_after_s=UNEXPECTED_RETRY_S
    )


class BodyLimit:
    """Refuse bodies over a size, declared or streamed, before anything parses them.

    A plain ASGI middleware: Starlette's `BaseHTTPMiddleware` costs a task and a stream copy per request.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        try:
            asgi_body.declared_length(scope, self._max)
        except asgi_body.BodyError as exc:
            await _too_large(scope, receive, send, exc)
            return
        meter = asgi_body.BodyMeter(self._max)
        refused = False

        async def counting_receive() -> Message:
            nonlocal refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            try:
                meter.count(message)
            except asgi_body.BodyTooLargeError as exc:
                # Answer now and tell the app the client left: it stops reading, and its answer is dropped.
                refused = True
                await _too_large(scope, receive, send, exc)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self._app(scope, counting_receive, guarded_send)


async def _too_large(scope: Scope, receive: Receive, send: Send, exc: asgi_body.BodyError) -> None:
    """413 body_too_large, also for a Content-Length that is no size (as trustd has always answered it)."""
    await _error(413, "body_too_large", str(exc))(scope, receive, send)


def _validation_reason(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)[:1000] or "the request does not fit this route"


def _error(status: int, code: str, reason: str, *, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse(status_code=status, content={"error": code, "reason": reason}, headers=headers)
