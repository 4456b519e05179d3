"""What a node agent asks the hub for, over mTLS with its node SVID: the registration entries parented to its
node, X.509-SVIDs for them (the agent's own keys; only CSRs travel), JWT-SVIDs, and the trust bundle.

The hub checks every request against the caller (`authz.NODE`, on the bare fast path too): an enrolled, unrevoked
device may obtain identities only for entries whose parent is its own SPIFFE ID or an alias it belongs to (its
site's, `trustd/server/aliases.py`, from the claims stored at enrollment), and never a reserved name but a
cluster's identity under its site's alias
(`ReservedNames`, in case one was stored before the rule), so a compromised node can mint nothing beyond what
was assigned to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from edgetrust._internal import asgi_body
from edgetrust.protocol import RenewChallenge, RenewRequest, RenewResponse
from edgetrust.spiffe.id import ReservedNames, SpiffeId
from trustd.errors import TrustdError, UnavailableError
from trustd.server.aliases import aliases_of, cluster_identity_reason
from trustd.server.api import authz
from trustd.server.api.authz import Authorizer, Caller
from trustd.server.api.policy import NotAuthorizedError
from trustd.server.ca import SpiffeCA
from trustd.server.federation import Federation
from trustd.server.renewal import RenewalService
from trustd.server.revocations import Revocations
from trustd.server.store import EntryRecord, NeedsStore, Store, from_memory_or_off_loop, off_loop

log = logging.getLogger(__name__)

MAX_CSRS = 100
CACHE_S = 1.0


class SvidRequest(BaseModel):
    entry_id: str = Field(min_length=1, max_length=128)
    csr: str = Field(min_length=1, max_length=16384)


class SvidBatch(BaseModel):
    requests: list[SvidRequest] = Field(min_length=1, max_length=MAX_CSRS)


class JwtRequest(BaseModel):
    entry_id: str = Field(min_length=1, max_length=128)
    audience: list[str] = Field(min_length=1, max_length=16)


class SvidFastPath:
    """ASGI in front of the app: POST /v1/agent/svids answered without FastAPI's routing and dependency layers,
    which were a third of the hub's CPU per SVID when agents mint in bursts (svid_mint). Same checks (the route's
    rule `authz.NODE` through the same `Authorizer`, the pydantic model, the node's entries), same answers and
    statuses; every other request goes through."""

    PATH = "/v1/agent/svids"
    MAX_BODY = 2 * 1024 * 1024

    def __init__(
        self,
        app: ASGIApp,
        authorizer: Authorizer,
        issue: Callable[[str, SvidBatch, bool], dict[str, Any]],
        store: Store,
        key_in_memory: bool = True,
    ) -> None:
        self._key_in_memory = key_in_memory
        self._app = app
        self._authorizer = authorizer
        self._issue = issue
        self._store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        try:
            body = await asgi_body.read_body(scope, receive, self.MAX_BODY)
        except asgi_body.ClientGoneError:
            return  # nobody to answer, nothing decided
        except asgi_body.BodyError as exc:  # over the limit, or a Content-Length that is no size: as BodyLimit
            await _answer(send, 413, {"error": "body_too_large", "reason": str(exc)})
            return

        def answer_of(from_memory: bool) -> dict[str, Any]:
            caller = self._authorizer.check(scope, authz.NODE, from_memory=from_memory)
            return self._issue(caller.spiffe_id, SvidBatch.model_validate(orjson.loads(body)), from_memory)

        try:
            await self._authorizer.settle(scope)
            answer = await from_memory_or_off_loop(self._store, answer_of, in_memory=self._key_in_memory)
        except TrustdError as exc:
            headers = {"retry-after": str(exc.retry_after_s)} if isinstance(exc, UnavailableError) else {}
            if isinstance(exc, UnavailableError):
                log.warning("POST %s: unavailable: %s", self.PATH, exc.diagnostics())
            await _answer(send, exc.status, {"error": exc.code, "reason": exc.diagnostics()}, headers)
            return
        except (orjson.JSONDecodeError, ValidationError) as exc:
            await _answer(send, 422, {"error": "invalid_request", "reason": str(exc)[:500]})
            return
        await _answer(send, 200, answer)


async def _answer(send: Send, status: int, body: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> None:
    payload = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


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
    authorizer: Authorizer,
    reserved: ReservedNames,
    jwt_ttl: timedelta,
    federation: Federation | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/v1/agent")
    node_rule = authorizer.require(authz.NODE)
    # A node's standing and its entries, looked up at most once a second: an agent asking for many SVIDs does
    # not query the store for each. A revocation here clears it at once (one elsewhere within the second the
    # revocation list takes to reach this replica anyway).
    known: dict[str, tuple[float, tuple[EntryRecord, ...]]] = {}
    revocations.on_change(known.clear)

    def node_of(spiffe_id: str, from_memory: bool = False) -> str:
        cached = known.get(spiffe_id)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return spiffe_id
        if from_memory:
            raise NeedsStore(spiffe_id)
        device = store.device_by_spiffe_id(spiffe_id)
        if device is None:
            raise NotAuthorizedError(f"{spiffe_id} is not an enrolled node")
        if device.status != "enrolled" or revocations.is_revoked(spiffe_id):
            known.pop(spiffe_id, None)
            raise NotAuthorizedError(f"{spiffe_id} is revoked")
        entries = list(store.entries(parent_id=spiffe_id))
        for alias in aliases_of(ca.trust_domain, device.claims):  # the sets of nodes it belongs to (its site)
            entries += store.entries(parent_id=alias)
        known[spiffe_id] = (time.monotonic(), mintable(entries))
        return spiffe_id

    def mintable(entries: Sequence[EntryRecord]) -> tuple[EntryRecord, ...]:
        """The node's entries minus any naming a reserved identity (stored before the rule, or by hand), but for
        a cluster's own identity under a site alias, selected by k8s:ns and k8s:sa (`aliases`)."""
        kept = []
        for entry in entries:
            try:
                reason = reserved.reason(SpiffeId.parse(entry.spiffe_id))
                if reason is not None and not cluster_identity_reason(
                    ca.trust_domain, entry.spiffe_id, entry.parent_id, entry.selectors
                ):
                    reason = None
            except TrustdError as exc:
                reason = exc.diagnostics()
            if reason is None:
                kept.append(entry)
            else:
                log.warning("entry %s is not served: %s", entry.id, reason)
        return tuple(kept)

    def own_entry(parent: str, entry_id: str) -> EntryRecord:
        for entry in known[parent][1]:
            if entry.id == entry_id:
                return entry
        raise NotAuthorizedError(f"entry {entry_id!r} is not assigned to {parent}")

    # Each handler is a millisecond or two of CPU and SQLite under the GIL: with SQLite, run on the event loop,
    # not through a worker thread (the hop cost more than the work: svid_mint went from 830 to 1,480 SVIDs/s);
    # with PostgreSQL, whose calls wait on the network, on a worker thread (`off_loop`)
    @router.post("/renew/challenge")
    async def renew_challenge(caller: Caller = node_rule) -> RenewChallenge:
        return await off_loop(store, lambda: renewal.begin(renewable(caller)))

    @router.post("/renew")
    async def renew(body: RenewRequest, caller: Caller = node_rule) -> RenewResponse:
        return await off_loop(store, lambda: renewal.complete(renewable(caller), body))

    def renewable(caller: Caller) -> str:
        """A node renews its own name, unless that name is privileged (enrolled under a template since refused)."""
        reason = reserved.privileged_reason(SpiffeId.parse(caller.spiffe_id))
        if reason is not None:
            raise NotAuthorizedError(f"{reason}: this node may not renew it")
        return caller.spiffe_id

    @router.get("/entries")
    async def entries(caller: Caller = node_rule) -> dict[str, Any]:
        return await off_loop(store, lambda: entries_of(caller))

    def entries_of(caller: Caller) -> dict[str, Any]:
        known.pop(caller.spiffe_id, None)  # the agent's regular look at its entries: always fresh
        parent = node_of(caller.spiffe_id)
        return {
            "entries": [entry_view(e) for e in known[parent][1]],
            "bundle": ca.bundle(),
            "trust_domain": str(ca.trust_domain),
            "federated": dict(federation.jwks()) if federation is not None else {},
        }

    def issue(spiffe_id: str, body: SvidBatch, from_memory: bool = False) -> dict[str, Any]:
        parent = node_of(spiffe_id, from_memory)  # first: NeedsStore before any SVID is signed
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

    @router.post("/svids")
    async def svids(body: SvidBatch, caller: Caller = node_rule) -> dict[str, Any]:
        return await off_loop(store, lambda: issue(caller.spiffe_id, body))

    router.issue_svids = issue  # type: ignore[attr-defined]  # for SvidFastPath

    @router.post("/jwt")
    async def jwt_svid(body: JwtRequest, caller: Caller = node_rule) -> dict[str, Any]:
        entry = await off_loop(store, lambda: own_entry(node_of(caller.spiffe_id), body.entry_id))
        token = ca.issue_jwt_svid(SpiffeId.parse(entry.spiffe_id), audience=body.audience, ttl=jwt_ttl)
        return {"spiffe_id": entry.spiffe_id, "token": token}

    return router
