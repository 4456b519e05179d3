"""HTTP surface of policy distribution. Every caller is identified by the SPIFFE ID of its X.509-SVID (mTLS):
clusters as spiffe://<trust domain>/cluster/<name>, publishers as listed in the fleet file."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from trustd.errors import TrustdError
from trustd.policy_bundles import PolicyBundles, PolicyDistributionError
from trustd.spiffe_id import TrustDomain
from trustd.tls_peer import peer_spiffe_id

MAX_BUNDLE_BYTES = 8 * 1024 * 1024
MAX_WAIT_S = 60.0
#: on every bundle answer: the ETag of the current revocation list; the agent fetches the list when it moved
REVOCATIONS_HEADER = "X-Edgetrust-Revocations"


class NotAuthorizedError(TrustdError):
    code = "not_authorized"


def policy_router(bundles: PolicyBundles, trust_domain: TrustDomain) -> APIRouter:
    router = APIRouter(prefix="/v1/policy")
    cluster_prefix = f"spiffe://{trust_domain}/cluster/"

    def cluster_of(request: Request) -> str:
        spiffe_id = peer_spiffe_id(request.scope)
        if not spiffe_id.startswith(cluster_prefix) or spiffe_id[len(cluster_prefix) :] not in bundles.fleet.clusters:
            raise NotAuthorizedError(f"{spiffe_id} is not a cluster of this fleet")
        if bundles.revocations is not None and bundles.revocations.is_revoked(spiffe_id):
            raise NotAuthorizedError(f"{spiffe_id} is revoked")
        return spiffe_id[len(cluster_prefix) :]

    def revocation_headers() -> dict[str, str]:
        if bundles.revocations is None:
            return {}
        return {REVOCATIONS_HEADER: bundles.revocations.current().etag}

    def publisher(request: Request) -> str:
        spiffe_id = peer_spiffe_id(request.scope)
        if spiffe_id not in bundles.fleet.publishers:
            raise NotAuthorizedError(f"{spiffe_id} may not publish policy")
        return spiffe_id

    def take_reports(cluster: str, reports: Any) -> int:
        if not isinstance(reports, list) or len(reports) > 1000:
            raise PolicyDistributionError("status must be a list of at most 1000 reports")
        for report in reports:
            if isinstance(report, dict):
                bundles.report(cluster, report)
        return len(reports)

    @router.post("/bundle")
    async def poll_with_reports(request: Request, wait: float = 0.0) -> Response:
        """The agent's poll carrying its queued status reports: one round trip per sync instead of two."""
        cluster = cluster_of(request)
        try:
            body = await request.json()
        except ValueError as exc:
            raise PolicyDistributionError(f"a poll's body must be JSON: {exc}") from exc
        take_reports(cluster, body.get("reports") if isinstance(body, dict) else None)
        return await answer_poll(request, cluster, wait)

    @router.get("/bundle")
    async def bundle(request: Request, wait: float = 0.0) -> Response:
        return await answer_poll(request, cluster_of(request), wait)

    async def answer_poll(request: Request, cluster: str, wait: float) -> Response:
        etag = request.headers.get("if-none-match")
        seen_revocations = request.headers.get(REVOCATIONS_HEADER.lower())
        found = await bundles.wait_for_change(cluster, etag, min(max(wait, 0.0), MAX_WAIT_S), seen_revocations)
        if found is None:
            current = bundles.bundle_for(cluster)
            if current is None:  # nothing released to this cluster yet
                return Response(status_code=204, headers=revocation_headers())
            return Response(status_code=304, headers={"ETag": current[1], **revocation_headers()})
        blob, new_etag = found
        return Response(blob, media_type="application/gzip", headers={"ETag": new_etag, **revocation_headers()})

    @router.get("/revocations")
    async def revocations(request: Request) -> Response:
        """The hub-signed revocation bundle (OPA format, root edgetrust/revocations)."""
        cluster_of(request)
        if bundles.revocations is None:
            return Response(status_code=404)
        signed = bundles.revocations.current()
        if request.headers.get("if-none-match") == signed.etag:
            return Response(status_code=304, headers={"ETag": signed.etag})
        return Response(signed.blob, media_type="application/gzip", headers={"ETag": signed.etag})

    @router.post("/status")
    async def status(request: Request) -> dict[str, int]:
        cluster = cluster_of(request)
        try:
            reports = await request.json()
        except ValueError as exc:
            raise PolicyDistributionError(f"status must be JSON: {exc}") from exc
        return {"accepted": take_reports(cluster, reports)}

    @router.post("/bundles/{group}")
    async def publish(group: str, request: Request) -> dict[str, Any]:
        caller = publisher(request)
        blob = await request.body()
        if len(blob) > MAX_BUNDLE_BYTES:
            raise PolicyDistributionError(f"bundles are limited to {MAX_BUNDLE_BYTES} bytes")
        return bundles.publish(group, blob, publisher=caller).view()

    @router.get("/rollouts/{group}")
    async def rollout(group: str, request: Request) -> JSONResponse:
        peer_spiffe_id(request.scope)  # any fleet member may watch
        found = bundles.rollout(group)
        if found is None:
            return JSONResponse({"error": "no_rollout", "reason": f"nothing published to {group!r}"}, status_code=404)
        return JSONResponse(found.view())

    return router
