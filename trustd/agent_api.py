"""What a node agent asks the hub for, over mTLS with its node SVID: the registration entries parented to its
node, X.509-SVIDs for them (the agent's own keys; only CSRs travel), JWT-SVIDs, and the trust bundle.

The hub checks every request against the caller: an enrolled, unrevoked device may obtain identities only for
entries whose parent is its own SPIFFE ID, so a compromised node can mint nothing beyond what was assigned to it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from trustd.api_models import RenewChallenge, RenewRequest, RenewResponse
from trustd.ca import SpiffeCA
from trustd.federation import Federation
from trustd.policy_api import NotAuthorizedError
from trustd.renewal import RenewalService
from trustd.revocations import Revocations
from trustd.spiffe_id import SpiffeId
from trustd.store import EntryRecord, Store
from trustd.tls_peer import peer_spiffe_id

MAX_CSRS = 100


class SvidRequest(BaseModel):
    entry_id: str = Field(min_length=1, max_length=128)
    csr: str = Field(min_length=1, max_length=16384)


class SvidBatch(BaseModel):
    requests: list[SvidRequest] = Field(min_length=1, max_length=MAX_CSRS)


class JwtRequest(BaseModel):
    entry_id: str = Field(min_length=1, max_length=128)
    audience: list[str] = Field(min_length=1, max_length=16)


def entry_view(entry: EntryRecord) -> dict[str, Any]:
    return {
        "id": entry.id,
        "spiffe_id": entry.spiffe_id,
        "parent_id": entry.parent_id,
        "selectors": list(entry.selectors),
        "ttl_s": entry.ttl_s,
    }


def agent_router(
    store: Store,
    ca: SpiffeCA,
    revocations: Revocations,
    renewal: RenewalService,
    *,
    jwt_ttl: timedelta,
    federation: Federation | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/v1/agent")

    def node(request: Request) -> str:
        spiffe_id = peer_spiffe_id(request.scope)
        device = store.device_by_spiffe_id(spiffe_id)
        if device is None:
            raise NotAuthorizedError(f"{spiffe_id} is not an enrolled node")
        if device.status != "enrolled" or revocations.is_revoked(spiffe_id):
            raise NotAuthorizedError(f"{spiffe_id} is revoked")
        return spiffe_id

    def own_entry(parent: str, entry_id: str) -> EntryRecord:
        for entry in store.entries(parent_id=parent):
            if entry.id == entry_id:
                return entry
        raise NotAuthorizedError(f"entry {entry_id!r} is not assigned to {parent}")

    @router.post("/renew/challenge")
    def renew_challenge(request: Request) -> RenewChallenge:
        return renewal.begin(peer_spiffe_id(request.scope))

    @router.post("/renew")
    def renew(body: RenewRequest, request: Request) -> RenewResponse:
        return renewal.complete(peer_spiffe_id(request.scope), body)

    @router.get("/entries")
    def entries(request: Request) -> dict[str, Any]:
        parent = node(request)
        return {
            "entries": [entry_view(e) for e in store.entries(parent_id=parent)],
            "bundle": ca.bundle(),
            "trust_domain": str(ca.trust_domain),
            "federated": dict(federation.jwks()) if federation is not None else {},
        }

    @router.post("/svids")
    def svids(body: SvidBatch, request: Request) -> dict[str, Any]:
        parent = node(request)
        issued = []
        for item in body.requests:
            entry = own_entry(parent, item.entry_id)
            svid = ca.issue_x509_svid(
                item.csr.encode(), SpiffeId.parse(entry.spiffe_id), ttl=timedelta(seconds=entry.ttl_s)
            )
            issued.append(
                {
                    "entry_id": entry.id,
                    "spiffe_id": entry.spiffe_id,
                    "chain": svid.chain_pem().decode(),
                    "not_after": svid.not_after.timestamp(),
                }
            )
        return {"svids": issued}

    @router.post("/jwt")
    def jwt_svid(body: JwtRequest, request: Request) -> dict[str, Any]:
        entry = own_entry(node(request), body.entry_id)
        token = ca.issue_jwt_svid(SpiffeId.parse(entry.spiffe_id), audience=body.audience, ttl=jwt_ttl)
        return {"spiffe_id": entry.spiffe_id, "token": token}

    return router
