"""The operator's view of the fleet over HTTPS: enrolled nodes, their SVIDs and policy status, revocation.

Only operators (SPIFFE IDs listed in the hub's settings or fleet file, authenticated by mTLS) may call it:
revoking is as strong as enrolling, and the node list maps the whole estate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from trustd.policy_api import NotAuthorizedError
from trustd.policy_bundles import PolicyBundles
from trustd.revocations import Revocations
from trustd.store import Store
from trustd.tls_peer import peer_spiffe_id


class RevokeRequest(BaseModel):
    target: str = Field(min_length=1, max_length=2048, description="SPIFFE ID, node name or EK fingerprint")
    reason: str = Field(default="", max_length=500)


def fleet_router(
    store: Store, revocations: Revocations, operators: Callable[[], frozenset[str]], policy: PolicyBundles | None
) -> APIRouter:
    router = APIRouter(prefix="/v1/fleet")

    def operator(request: Request) -> str:
        spiffe_id = peer_spiffe_id(request.scope)
        if spiffe_id not in operators():
            raise NotAuthorizedError(f"{spiffe_id} is not an operator of this hub")
        return spiffe_id

    @router.get("/nodes")
    def nodes(request: Request) -> dict[str, Any]:
        operator(request)
        listed = []
        for device in store.devices():
            svids = store.svids(device.spiffe_id)
            listed.append(
                {
                    "spiffe_id": device.spiffe_id,
                    "device_class": device.device_class,
                    "ek_fingerprint": device.ek_fingerprint,
                    "claims": device.claims,
                    "status": device.status,
                    "enrolled_at": device.enrolled_at,
                    "svid_expires_at": max((s.not_after for s in svids), default=None),
                }
            )
        clusters = {}
        if policy is not None:
            for name in policy.fleet.clusters:
                report = policy.status.get(name, {})
                clusters[name] = {
                    "revision": report.get("revision"),
                    "result": report.get("result"),
                    "last_report": report.get("received"),
                }
        return {"nodes": listed, "clusters": clusters, "revocations": revocations.current().counter}

    @router.get("/revocations")
    def listed(request: Request) -> dict[str, Any]:
        operator(request)
        return {
            "counter": revocations.current().counter,
            "revocations": [
                {
                    "spiffe_id": r.spiffe_id,
                    "ek_fingerprint": r.ek_fingerprint,
                    "reason": r.reason,
                    "revoked_by": r.revoked_by,
                    "revoked_at": r.revoked_at,
                }
                for r in revocations.records()
            ],
        }

    @router.post("/revocations")
    def revoke(body: RevokeRequest, request: Request) -> dict[str, Any]:
        by = operator(request)
        record = revocations.revoke(body.target, reason=body.reason, by=by)
        return {
            "spiffe_id": record.spiffe_id,
            "ek_fingerprint": record.ek_fingerprint,
            "counter": revocations.current().counter,
            "revoked_at": record.revoked_at,
        }

    return router
