"""The operator's view of the fleet over HTTPS: enrolled nodes, their SVIDs and policy status, revocation.

Only operators (SPIFFE IDs listed in the hub's settings or fleet file, authenticated by mTLS) may call it:
revoking is as strong as enrolling, and the node list maps the whole estate.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from trustd.agent_api import entry_view
from trustd.errors import TrustdError
from trustd.policy_api import NotAuthorizedError
from trustd.policy_bundles import PolicyBundles
from trustd.revocations import Revocations
from trustd.spiffe_id import SpiffeId, TrustDomain
from trustd.store import AuditEvent, EntryRecord, Store
from trustd.tls_peer import peer_spiffe_id

#: the workload attestors the node agent implements (unix: SO_PEERCRED of the caller; k8s: from the kubelet)
SELECTOR_TYPES = ("unix", "k8s")


class EntryError(TrustdError):
    code = "entry_refused"


class EntryRequest(BaseModel):
    spiffe_id: str = Field(min_length=10, max_length=2048)
    parent_id: str = Field(min_length=10, max_length=2048, description="the node whose agent serves it")
    selectors: list[str] = Field(min_length=1, max_length=32)
    ttl_s: int = Field(default=3600, ge=60, le=86400)


class RevokeRequest(BaseModel):
    target: str = Field(min_length=1, max_length=2048, description="SPIFFE ID, node name or EK fingerprint")
    reason: str = Field(default="", max_length=500)


def fleet_router(
    store: Store,
    revocations: Revocations,
    operators: Callable[[], frozenset[str]],
    policy: PolicyBundles | None,
    trust_domain: TrustDomain,
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

    @router.post("/entries")
    def create_entry(body: EntryRequest, request: Request) -> dict[str, Any]:
        by = operator(request)
        for name in (body.spiffe_id, body.parent_id):
            if SpiffeId.parse(name).trust_domain != trust_domain:
                raise EntryError(f"{name} is not in trust domain {trust_domain}")
        for selector in body.selectors:
            kind, _, value = selector.partition(":")
            if kind not in SELECTOR_TYPES or not value or ":" not in value:
                raise EntryError(
                    f"selector {selector!r} is not <type>:<key>:<value> with a type of {', '.join(SELECTOR_TYPES)}"
                )
        entry = EntryRecord(
            id=uuid.uuid4().hex,
            spiffe_id=body.spiffe_id,
            parent_id=body.parent_id,
            selectors=tuple(sorted(body.selectors)),
            ttl_s=body.ttl_s,
            created_at=time.time(),
        )
        store.put_entry(entry)
        store.audit(AuditEvent(time.time(), "fleet.entry", "created", body.spiffe_id, {"by": by, "id": entry.id}))
        return entry_view(entry)

    @router.get("/entries")
    def list_entries(request: Request) -> dict[str, Any]:
        operator(request)
        return {"entries": [entry_view(e) for e in store.entries()]}

    @router.delete("/entries/{entry_id}")
    def delete_entry(entry_id: str, request: Request) -> dict[str, Any]:
        by = operator(request)
        if not store.delete_entry(entry_id):
            raise EntryError(f"no entry {entry_id!r}")
        store.audit(AuditEvent(time.time(), "fleet.entry", "deleted", entry_id, {"by": by}))
        return {"deleted": entry_id}

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
