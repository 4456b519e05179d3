"""The operator's view of the fleet over HTTPS: enrolled nodes, their SVIDs and policy status, revocation.

Only operators (SPIFFE IDs listed in the hub's settings or fleet file, authenticated by mTLS, not revoked) may
call it (`authz.OPERATOR` on every route): revoking is as strong as enrolling, and the node list maps the whole
estate. An entry may never name a privileged identity (`ReservedNames`): its node would mint it.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from edgetrust.spiffe.id import ReservedNames, SpiffeId, TrustDomain
from trustd.errors import BadRequestError, NotFoundError
from trustd.server.api import authz
from trustd.server.api.agent import entry_view
from trustd.server.api.authz import Authorizer, Caller
from trustd.server.policy.distribution import PolicyBundles
from trustd.server.revocations import Revocations
from trustd.server.store import AuditEvent, EntryRecord, Store

#: the workload attestors the node agent implements (unix: SO_PEERCRED of the caller; k8s: from the kubelet)
SELECTOR_TYPES = ("unix", "k8s")


class EntryError(BadRequestError):
    code = "entry_refused"


class NoSuchEntryError(NotFoundError):
    code = "no_such_entry"


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
    authorizer: Authorizer,
    policy: PolicyBundles | None,
    trust_domain: TrustDomain,
    reserved: ReservedNames,
) -> APIRouter:
    router = APIRouter(prefix="/v1/fleet")
    operator = authorizer.require(authz.OPERATOR)

    @router.get("/nodes")
    def nodes(_caller: Caller = operator) -> dict[str, Any]:
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
                report = policy.clusters.syncer(name) or {}
                clusters[name] = {
                    "revision": report.get("revision"),
                    "result": report.get("result"),
                    "last_report": report.get("received"),
                }
        return {"nodes": listed, "clusters": clusters, "revocations": revocations.current().counter}

    @router.post("/entries")
    def create_entry(body: EntryRequest, caller: Caller = operator) -> dict[str, Any]:
        for name in (body.spiffe_id, body.parent_id):
            if SpiffeId.parse(name).trust_domain != trust_domain:
                raise EntryError(f"{name} is not in trust domain {trust_domain}")
        # its node would mint it: never a node's, cluster's, operator's, publisher's or the hub's own name
        reserved.check(SpiffeId.parse(body.spiffe_id), is_node=lambda n: store.device_by_spiffe_id(n) is not None)
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
        detail = {"by": caller.spiffe_id, "id": entry.id}
        store.audit(AuditEvent(time.time(), "fleet.entry", "created", body.spiffe_id, detail))
        return entry_view(entry)

    @router.get("/entries")
    def list_entries(_caller: Caller = operator) -> dict[str, Any]:
        return {"entries": [entry_view(e) for e in store.entries()]}

    @router.delete("/entries/{entry_id}")
    def delete_entry(entry_id: Annotated[str, Path(max_length=128)], caller: Caller = operator) -> dict[str, Any]:
        if not store.delete_entry(entry_id):
            raise NoSuchEntryError(f"no entry {entry_id!r}")
        store.audit(AuditEvent(time.time(), "fleet.entry", "deleted", entry_id, {"by": caller.spiffe_id}))
        return {"deleted": entry_id}

    @router.get("/revocations")
    def listed(_caller: Caller = operator) -> dict[str, Any]:
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
    def revoke(body: RevokeRequest, caller: Caller = operator) -> dict[str, Any]:
        record = revocations.revoke(body.target, reason=body.reason, by=caller.spiffe_id)
        return {
            "spiffe_id": record.spiffe_id,
            "ek_fingerprint": record.ek_fingerprint,
            "counter": revocations.current().counter,
            "revoked_at": record.revoked_at,
        }

    return router
