"""Who may call which route of trustd: one layer, one rule per route, every caller's standing on every request.

The caller is whoever the mTLS handshake verified (an X.509-SVID of our CA) or nobody. Each request is
classified from that SPIFFE ID against the hub's own configuration and state: an operator or publisher is
listed, a cluster is in the fleet file, a node is an enrolled device. Every presented SVID is first checked
against the revocation list, so a revoked operator, publisher, cluster or node is refused on every route, the
public ones included, not just where a route happened to remember to ask.

Routes declare their rule with `Authorizer.require(rule)` (a FastAPI dependency); `check_routes` refuses to
build an app with a route that declares none, so a new route cannot be open by omission. The bare-ASGI fast
path for SVID minting calls `Authorizer.check` with the same rule. Per request the work is O(1): one
certificate parse, a set lookup in the revocation list, dict lookups, and for nodes a store look-up at most
once a second per node.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.types import Scope

from edgetrust._internal.tls import peer_spiffe_id
from edgetrust.spiffe.id import TrustDomain
from trustd.errors import TrustdError
from trustd.server.policy.distribution import PolicyBundles
from trustd.server.revocations import Revocations
from trustd.server.store import NeedsStore, Store, off_loop

#: how long a node's standing is trusted without asking the store again (a revocation here clears it at once)
NODE_CACHE_S = 1.0


class CallerRefusedError(TrustdError):
    """The caller's identity or standing does not admit it to this route."""

    code = "caller_not_allowed"
    status = 403


class Kind(StrEnum):
    ANONYMOUS = "anonymous"
    NODE = "node"
    CLUSTER = "cluster"
    OPERATOR = "operator"
    PUBLISHER = "publisher"


@dataclass(frozen=True, slots=True)
class Rule:
    """Who a route admits. `ANONYMOUS` admits everyone (without a certificate, or with an unrevoked one).

    `cluster_group_param` limits clusters and publishers to the cluster group named by that path parameter (the
    clusters of that group, the publishers the fleet file lists for it)."""

    name: str
    admits: frozenset[Kind]
    cluster_group_param: str | None = None


PUBLIC = Rule("public", frozenset({Kind.ANONYMOUS}))
NODE = Rule("node", frozenset({Kind.NODE}))
CLUSTER = Rule("cluster", frozenset({Kind.CLUSTER}))
OPERATOR = Rule("operator", frozenset({Kind.OPERATOR}))
PUBLISHER = Rule("publisher", frozenset({Kind.PUBLISHER}))
#: publishing to a group: the publishers the fleet file lists for that group
GROUP_PUBLISHER = Rule("publisher of the group", frozenset({Kind.PUBLISHER}), cluster_group_param="group")
#: a rollout's progress: operators, that group's publishers (they roll back from it) and its clusters
ROLLOUT_READER = Rule(
    "rollout reader", frozenset({Kind.OPERATOR, Kind.PUBLISHER, Kind.CLUSTER}), cluster_group_param="group"
)


@dataclass(frozen=True, slots=True)
class Caller:
    spiffe_id: str  # "" for a caller without a certificate
    kind: Kind
    #: the cluster's name in the fleet file, for cluster callers
    cluster: str = ""


ANONYMOUS = Caller("", Kind.ANONYMOUS)
_RULE_ATTRIBUTE = "__trustd_rule__"


class Authorizer:
    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        store: Store,
        revocations: Revocations,
        operators: frozenset[str],
        policy: PolicyBundles | None,
    ) -> None:
        self._store = store
        self._revocations = revocations
        self._operators = operators
        self._policy = policy
        self._cluster_prefix = f"spiffe://{trust_domain}/cluster/"
        self._nodes: dict[str, float] = {}
        revocations.on_change(self._nodes.clear)

    def check(
        self, scope: Scope, rule: Rule, path_params: Mapping[str, Any] | None = None, *, from_memory: bool = False
    ) -> Caller:
        """The caller, if `rule` admits it; else CallerRefusedError (StoreError when its standing is unknowable).
        `from_memory`: NeedsStore rather than a look at the store (from_memory_or_off_loop)."""
        if not _client_chain(scope):
            if Kind.ANONYMOUS in rule.admits:
                return ANONYMOUS
            raise CallerRefusedError("this endpoint needs a client certificate (mTLS with an X.509-SVID)")
        try:
            spiffe_id = peer_spiffe_id(scope)
        except TrustdError as exc:
            raise CallerRefusedError(exc.diagnostics()) from exc
        if self._revocations.is_revoked(spiffe_id):
            raise CallerRefusedError(f"{spiffe_id} is revoked")
        if Kind.ANONYMOUS in rule.admits:
            return Caller(spiffe_id, Kind.ANONYMOUS)
        if Kind.OPERATOR in rule.admits and spiffe_id in self._operators:
            return Caller(spiffe_id, Kind.OPERATOR)
        if Kind.PUBLISHER in rule.admits and self._policy is not None and spiffe_id in self._policy.fleet.publishers:
            if rule.cluster_group_param is not None:
                # publishers are authorized per group (the fleet file): another group's is no reader of this one
                wanted = (path_params or {}).get(rule.cluster_group_param)
                group = self._policy.fleet.groups.get(str(wanted))
                if group is None or spiffe_id not in group.publishers:
                    raise CallerRefusedError(f"{spiffe_id} is not a publisher of group {wanted!r}")
            return Caller(spiffe_id, Kind.PUBLISHER)
        if Kind.CLUSTER in rule.admits:
            cluster = self._cluster(spiffe_id)
            if cluster and rule.cluster_group_param is not None:
                wanted = (path_params or {}).get(rule.cluster_group_param)
                group = self._policy.fleet.group_of(cluster) if self._policy is not None else None
                if group is None or group.name != wanted:
                    raise CallerRefusedError(f"{spiffe_id} is not a cluster of group {wanted!r}")
            if cluster:
                return Caller(spiffe_id, Kind.CLUSTER, cluster)
        if Kind.NODE in rule.admits and self._enrolled_node(spiffe_id, from_memory):
            return Caller(spiffe_id, Kind.NODE)
        raise CallerRefusedError(f"{spiffe_id} is not {_article(rule)} of this hub")

    def require(self, rule: Rule) -> Any:
        """The route's rule, as a FastAPI dependency whose value is the `Caller`."""

        async def authorized(request: Request) -> Caller:
            await self.settle(request.scope)
            if Kind.NODE not in rule.admits:  # no store look-up: on the loop
                return self.check(request.scope, rule, request.path_params)
            return await off_loop(self._store, lambda: self.check(request.scope, rule, request.path_params))

        setattr(authorized, _RULE_ATTRIBUTE, rule)
        return Depends(authorized)

    async def settle(self, scope: Scope) -> None:
        """Before `check` of a caller with a certificate: when the revocation list is not known current (the
        store's last look failed), look again first, off the loop, so that the hub serves once the store is back."""
        if self._revocations.failing and _client_chain(scope):
            await self._revocations.refresh()

    def _cluster(self, spiffe_id: str) -> str:
        if self._policy is None or not spiffe_id.startswith(self._cluster_prefix):
            return ""
        name = spiffe_id[len(self._cluster_prefix) :]
        return name if name in self._policy.fleet.clusters else ""

    def _enrolled_node(self, spiffe_id: str, from_memory: bool = False) -> bool:
        seen = self._nodes.get(spiffe_id)
        if seen is not None and time.monotonic() - seen < NODE_CACHE_S:
            return True
        if from_memory:
            raise NeedsStore(spiffe_id)
        device = self._store.device_by_spiffe_id(spiffe_id)
        if device is None or device.status != "enrolled":
            self._nodes.pop(spiffe_id, None)
            return False
        self._nodes[spiffe_id] = time.monotonic()
        return True


def _client_chain(scope: Scope) -> Any:
    return ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []


def _article(rule: Rule) -> str:
    kinds = sorted(k.value for k in rule.admits)
    names = {"node": "an enrolled node", "operator": "an operator", "publisher": "a policy publisher"}
    return " or ".join(names.get(k, f"a {k} of the fleet") for k in kinds)


@dataclass(frozen=True, slots=True)
class RouteRule:
    method: str
    path: str  # as served, prefix included, e.g. /v1/policy/rollouts/{group}
    rule: Rule | None


def route_rules(app: FastAPI) -> list[RouteRule]:
    """Every (method, path) the app serves and the rule it declared, included routers flattened; None for a
    route that declared none or is not an APIRoute (a mount, a bare Starlette route)."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        rule = _declared(route) if isinstance(route, APIRoute) else None
        for method in sorted(context.methods or {"*"}):
            found.append(RouteRule(method, str(context.path), rule))
    return found


def _declared(route: APIRoute) -> Rule | None:
    rules = [getattr(d.call, _RULE_ATTRIBUTE) for d in route.dependant.dependencies if hasattr(d.call, _RULE_ATTRIBUTE)]
    return rules[0] if len(rules) == 1 else None


def check_routes(app: FastAPI) -> None:
    """Refuse an app in which some route has no rule, or more than one."""
    missing = [f"{r.method} {r.path}" for r in route_rules(app) if r.rule is None]
    if missing:
        raise TrustdError(f"routes without exactly one authorization rule: {', '.join(missing)}")
