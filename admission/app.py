"""The webhook's HTTP surface. Every answer to a review is an AdmissionReview, even for garbage in.

A review we cannot parse is answered `allowed: false` with code 400 and the reason (HTTP 200, so the API server
shows our message rather than a transport error); the uid is echoed when one can be found. Anything else that
goes wrong while answering, our own bug included, is converted here into a refusal: the API server never sees
a 500 from us, since a webhook registered `failurePolicy: Ignore` would turn that 500 into an admission.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Response
from starlette.types import Receive, Scope, Send

from admission.controller import AdmissionController
from admission.errors import AdmissionError, ReviewError
from admission.follow import BundleFollower, HandoffError
from admission.nodegate import NodeGate, NodeGateError
from admission.report import StatusReporter
from admission.review import MAX_REVIEW_BYTES, build_response, parse_review, uid_of
from edgetrust._internal import asgi_body

log = logging.getLogger("edgetrust.admission")


def create_app(
    controller: AdmissionController,
    *,
    follower: BundleFollower | None = None,
    reporter: StatusReporter | None = None,
    node_gate: NodeGate | None = None,
) -> ReviewEndpoints:
    metrics = controller.metrics
    ready = {"loaded": False}
    startup_failures: list[AdmissionError] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await controller.start()
        except AdmissionError as exc:  # said on one line by ReviewEndpoints (the framework would send a traceback)
            log.debug("start-up failed", exc_info=True)
            startup_failures.append(exc)
            raise
        if follower is not None:
            # seed before ready: a replica starting during a partition enforces the start-up set, one that
            # reaches the API server the newest verified bundle the syncer handed over
            try:
                await follower.check_once()
            except HandoffError as exc:
                log.warning("%s", exc.diagnostics())
            follower.start()
        if node_gate is not None:
            # seed before ready too; with no verified document held, bindings are refused (fail closed)
            try:
                await node_gate.check_once()
            except NodeGateError as exc:
                log.warning("%s", exc.diagnostics())
            node_gate.start()
        if reporter is not None:
            reporter.start()  # after the seed: the first report is the set this replica serves with
        # What start-up built lives as long as the process: keep it out of the collector's full passes, which
        # otherwise stall every request in flight (seen as p99 spikes under load).
        gc.collect()
        gc.freeze()
        ready["loaded"] = True
        try:
            yield
        finally:
            if reporter is not None:
                await reporter.close()
            if follower is not None:
                await follower.close()
            if node_gate is not None:
                await node_gate.close()
            await controller.close()

    app = FastAPI(title="edgetrust admission", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    framework_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's description of its own routes plus the review paths, which are served in front of it."""
        if app.openapi_schema is None:
            document = framework_openapi()
            document.setdefault("components", {}).setdefault("schemas", {})["AdmissionReview"] = ADMISSION_REVIEW_SCHEMA
            for path, summary in (("/validate", "validate"), ("/mutate", "validate, then pin images to digests")):
                document["paths"][path] = _review_operation(summary)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if not ready["loaded"]:
            return _json({"status": "loading policies"}, status=503)
        # OPA is asked on every probe (one small GET on loopback): a webhook whose OPA is gone is not ready,
        # and says why; one whose OPA restarted empty reloads it and is ready again
        problem = await controller.opa_problem()
        if problem is not None:
            return _json({"status": "not ready", "reason": problem}, status=503)
        # what this replica enforces, for the syncer to report per replica (a refused set is named, not hidden)
        status = controller.status
        return _json(
            {
                "status": "ready",
                "policies": status.revision,
                "counter": status.counter,
                "swaps": status.swaps,
                "last_failure": status.last_failure,
                "last_failed_revision": status.last_failed_revision,
                **({"node_attestation": node_gate.status} if node_gate is not None else {}),
            }
        )

    return ReviewEndpoints(app, controller, startup_failures)


class ReviewEndpoints:
    """POST /validate and /mutate as bare ASGI in front of the FastAPI app, which serves everything else.

    The review path reads and checks its own body, so the framework's middleware and routing stack is pure
    cost there: measured ~0.2 ms of the webhook's ~0.7 ms own time per review. Lifespan and every other path
    go to FastAPI unchanged.
    """

    PATHS: ClassVar[dict[str, bool]] = {"/validate": False, "/mutate": True}

    def __init__(
        self, app: FastAPI, controller: AdmissionController, startup_failures: list[AdmissionError] | None = None
    ) -> None:
        self.app = app
        self._controller = controller
        self._metrics = controller.metrics
        self._startup_failures = startup_failures if startup_failures is not None else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._one_line_startup_failure(send))
            return
        mutate = self.PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if mutate is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, answer = await self._answer(scope, receive, mutate=mutate)
        body = orjson.dumps(answer)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._metrics.latency.labels("mutate" if mutate else "validate").observe(time.perf_counter() - started)

    @property
    def startup_failure(self) -> AdmissionError | None:
        """Why the lifespan's start-up failed, for the caller to say (the server only exits)."""
        return self._startup_failures[-1] if self._startup_failures else None

    def _one_line_startup_failure(self, send: Send) -> Send:
        """A start-up that failed on one of our errors is not sent to the server as the framework's traceback:
        the caller says it, on one line (`startup_failure`); the traceback goes to the debug log (-v)."""

        async def relay(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed" and self._startup_failures:
                message = {**message, "message": ""}
            await send(message)

        return relay

    async def _answer(self, scope: Scope, receive: Receive, *, mutate: bool) -> tuple[int, dict[str, object]]:
        try:
            body = await asgi_body.read_body(scope, receive, MAX_REVIEW_BYTES)
        except asgi_body.BodyTooLargeError as exc:
            self._metrics.requests.labels("bad_review").inc()
            return 413, build_response("", allowed=False, message=str(exc), code=413, reason="RequestEntityTooLarge")
        except asgi_body.BodyError as exc:  # a Content-Length that is no size, a client gone mid-body
            self._metrics.requests.labels("bad_review").inc()
            return 400, build_response("", allowed=False, message=str(exc), code=400, reason="BadRequest")
        try:
            return 200, await self._controller.answer(parse_review(body), mutate=mutate)
        except ReviewError as exc:
            self._metrics.requests.labels("bad_review").inc()
            return 200, build_response(
                uid_of(body), allowed=False, message=exc.diagnostics(), code=400, reason="BadRequest"
            )
        except AdmissionError as exc:
            self._metrics.requests.labels("error").inc()
            log.warning("admission failed: %s", exc.diagnostics())
            return 200, build_response(uid_of(body), allowed=False, message=exc.diagnostics(), code=500)
        except Exception:  # the boundary: a foreign exception is a refusal, never an HTTP 500 (see module doc)
            self._metrics.requests.labels("error").inc()
            log.exception("admission failed on an unexpected error; refusing the review")
            message = "edgetrust could not decide this review (internal error, logged by the webhook); refused"
            return 200, build_response(uid_of(body), allowed=False, message=message, code=500, reason="InternalError")


def _json(content: object, *, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


# What the API server sends (admission.k8s.io/v1); loose where Kubernetes is (objects are any kind).
ADMISSION_REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "request"],
    "properties": {
        "apiVersion": {"type": "string", "enum": ["admission.k8s.io/v1"]},
        "kind": {"type": "string", "enum": ["AdmissionReview"]},
        "request": {
            "type": "object",
            "required": ["uid", "kind", "operation"],
            "properties": {
                "uid": {"type": "string", "minLength": 1, "maxLength": 128},
                "kind": {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {
                        "group": {"type": "string"},
                        "version": {"type": "string"},
                        "kind": {"type": "string"},
                    },
                },
                "resource": {"type": "object"},
                "namespace": {"type": "string"},
                "name": {"type": "string"},
                "operation": {"type": "string", "enum": ["CREATE", "UPDATE", "DELETE", "CONNECT"]},
                "userInfo": {"type": "object"},
                "object": {"type": "object"},
                "oldObject": {"type": ["object", "null"]},
                "dryRun": {"type": "boolean"},
            },
        },
    },
}


def _review_operation(summary: str) -> dict[str, Any]:
    review = {"$ref": "#/components/schemas/AdmissionReview"}
    answer = {
        "description": "an AdmissionReview with the response",
        "content": {"application/json": {"schema": review}},
    }
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": review}}},
            "responses": {
                "200": answer,
                "400": {"description": "the body could not be read (refused as an AdmissionReview)"},
                "413": {"description": "the body is over the size limit (refused as an AdmissionReview)"},
            },
        }
    }
