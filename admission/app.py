"""The webhook's HTTP surface. Every answer to a review is an AdmissionReview, even for garbage in.

A review we cannot parse is answered `allowed: false` with code 400 and the reason (HTTP 200, so the API server
shows our message rather than a transport error); the uid is echoed when one can be found.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from admission.controller import AdmissionController
from admission.errors import AdmissionError, ReviewError
from admission.review import MAX_REVIEW_BYTES, build_response, parse_review, uid_of

log = logging.getLogger("edgetrust.admission")


def create_app(controller: AdmissionController) -> FastAPI:
    metrics = controller.metrics
    ready = {"loaded": False}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await controller.start()
        ready["loaded"] = True
        try:
            yield
        finally:
            await controller.close()

    app = FastAPI(title="edgetrust admission", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)

    async def handle(request: Request, *, mutate: bool) -> Response:
        started = time.perf_counter()
        endpoint = "mutate" if mutate else "validate"
        try:
            body = await _read_limited(request, MAX_REVIEW_BYTES)
        except ReviewError as exc:
            answer = build_response("", allowed=False, message=str(exc), code=413, reason="RequestEntityTooLarge")
            return _json(answer, status=413)
        try:
            review = parse_review(body)
            answer = await controller.answer(review, mutate=mutate)
        except ReviewError as exc:
            metrics.requests.labels("bad_review").inc()
            answer = build_response(
                uid_of(body), allowed=False, message=exc.diagnostics(), code=400, reason="BadRequest"
            )
        except AdmissionError as exc:
            metrics.requests.labels("error").inc()
            log.warning("admission failed: %s", exc.diagnostics())
            answer = build_response(uid_of(body), allowed=False, message=exc.diagnostics(), code=500)
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return _json(answer)

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        return await handle(request, mutate=False)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        return await handle(request, mutate=True)

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
        return _json({"status": "ready", "policies": controller.policies.revision})

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ReviewError(f"request bodies are limited to {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ReviewError(f"request bodies are limited to {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(content: object, *, status: int = 200) -> Response:
    return Response(json.dumps(content, separators=(",", ":")), status_code=status, media_type="application/json")
