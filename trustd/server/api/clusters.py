"""`POST /v1/fleet/clusters/{cluster}/identity`: what a new cluster needs so its workloads get their identity from
the node agents of its site instead of from a Secret (`trustctl fleet cluster add`).

It creates, once per service account given (the chart's syncer and webhook), a registration entry naming the
cluster's SPIFFE ID `spiffe://<td>/cluster/<cluster>` under the site's node alias (`trustd/server/aliases.py`),
selected by `k8s:ns:<namespace>` and `k8s:sa:<service account>`: any enrolled node of the site serves it to
those pods, and no other pod and no node of another site gets it. The generic entry route refuses this name
(it is reserved); this route is the only way in, operators only (`authz.OPERATOR`), and every call is audited.

`GET /v1/fleet/clusters/{cluster}/nodes`: the cluster's signed node attestation document, to that cluster's own
SVID only (trustd/server/nodestatus.py).

Idempotent: entries already there are kept and reported, not duplicated. Fails closed: a cluster not in the
fleet file (its SVID would be refused everywhere), a site that contradicts the fleet file's `site` label, or a
cluster whose identity is already parented to another site's alias (delete those entries first) is refused.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from edgetrust.spiffe.id import SpiffeId, TrustDomain
from trustd.errors import BadRequestError, ConflictError, InvalidSpiffeIdError
from trustd.server.aliases import cluster_identity_reason, parse_alias, site_alias
from trustd.server.api import authz
from trustd.server.api.agent import entry_view
from trustd.server.api.authz import Authorizer, Caller, CallerRefusedError
from trustd.server.nodestatus import NodeAttestations, NoNodeStatusError
from trustd.server.policy.distribution import PolicyBundles
from trustd.server.store import AuditEvent, EntryRecord, Store

#: Kubernetes names: a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
#: a cluster runs a syncer and a webhook; a few more are allowed, not an open list
MAX_SERVICE_ACCOUNTS = 8


class ClusterIdentityError(BadRequestError):
    code = "cluster_identity_refused"


class ClusterIdentityConflictError(ConflictError):
    code = "cluster_identity_conflict"


class ClusterIdentityRequest(BaseModel):
    site: str = Field(min_length=1, max_length=256)
    namespace: str = Field(min_length=1, max_length=63)
    service_accounts: list[str] = Field(min_length=1, max_length=MAX_SERVICE_ACCOUNTS)
    ttl_s: int = Field(default=3600, ge=60, le=86400)


def cluster_router(
    store: Store,
    authorizer: Authorizer,
    policy: PolicyBundles | None,
    trust_domain: TrustDomain,
    nodes: NodeAttestations | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/v1/fleet/clusters")
    operator = authorizer.require(authz.OPERATOR)
    cluster_rule = authorizer.require(authz.CLUSTER)

    @router.get("/{cluster}/nodes")
    def node_status(cluster: Annotated[str, Path(max_length=253)], caller: Caller = cluster_rule) -> Response:
        """The cluster's signed node attestation document (trustd/server/nodestatus.py), to that cluster only:
        the list maps a site's nodes, and no other cluster needs it."""
        if caller.cluster != cluster:
            raise CallerRefusedError(f"{caller.spiffe_id} may read only its own cluster's node status, not {cluster!r}")
        if nodes is None:
            raise NoNodeStatusError("this hub has no fleet file: no cluster has node status")
        return Response(nodes.document(cluster), media_type="application/gzip")

    @router.post("/{cluster}/identity")
    def add_identity(
        cluster: Annotated[str, Path(max_length=253)], body: ClusterIdentityRequest, caller: Caller = operator
    ) -> dict[str, Any]:
        spiffe_id, parent = _names(trust_domain, cluster, body)
        _check_fleet(policy, cluster, body.site)
        held = [e for e in store.entries() if e.spiffe_id == spiffe_id]
        elsewhere = sorted({e.parent_id for e in held if e.parent_id != parent})
        if elsewhere:
            raise ClusterIdentityConflictError(
                f"{spiffe_id} is already served under {', '.join(elsewhere)}: a cluster lives at one site; "
                "delete those entries (trustctl fleet entry delete) before adding it to site "
                f"{body.site!r}"
            )
        kept, created = [], []
        for account in sorted(set(body.service_accounts)):
            selectors = tuple(sorted((f"k8s:ns:{body.namespace}", f"k8s:sa:{account}")))
            same = [e for e in held if e.selectors == selectors]
            if same:
                kept.append(same[0])
                continue
            entry = EntryRecord(
                id=uuid.uuid4().hex,
                spiffe_id=spiffe_id,
                parent_id=parent,
                selectors=selectors,
                ttl_s=body.ttl_s,
                created_at=time.time(),
            )
            reason = cluster_identity_reason(trust_domain, entry.spiffe_id, entry.parent_id, entry.selectors)
            if reason is not None:  # what the agent API would refuse to serve is never stored
                raise ClusterIdentityError(reason)
            store.put_entry(entry)
            created.append(entry)
        detail = {
            "by": caller.spiffe_id,
            "site": body.site,
            "created": ",".join(e.id for e in created),
            "kept": ",".join(e.id for e in kept),
        }
        store.audit(AuditEvent(time.time(), "fleet.cluster", "identity", spiffe_id, detail))
        return {
            "cluster": cluster,
            "spiffe_id": spiffe_id,
            "parent_id": parent,
            "created": [entry_view(e) for e in created],
            "kept": [entry_view(e) for e in kept],
        }

    return router


def _names(trust_domain: TrustDomain, cluster: str, body: ClusterIdentityRequest) -> tuple[str, str]:
    """The cluster's SPIFFE ID and its site's alias, each refused with the rule it breaks."""
    if not _LABEL.fullmatch(body.namespace):
        raise ClusterIdentityError(f"namespace {body.namespace[:80]!r} is not a Kubernetes namespace name")
    for account in body.service_accounts:
        if len(account) > 253 or not _SUBDOMAIN.fullmatch(account):
            raise ClusterIdentityError(f"service account {account[:80]!r} is not a Kubernetes service account name")
    try:
        spiffe_id = SpiffeId.parse(f"spiffe://{trust_domain}/cluster/{cluster}")
        parent = site_alias(trust_domain, body.site)
    except InvalidSpiffeIdError as exc:
        raise ClusterIdentityError(f"the cluster or site name is no SPIFFE ID path segment: {exc}") from exc
    if len(spiffe_id.path.split("/")) != 3 or parse_alias(trust_domain, str(parent)) is None:
        raise ClusterIdentityError("the cluster and the site must each be one path segment (no '/')")
    return str(spiffe_id), str(parent)


def _check_fleet(policy: PolicyBundles | None, cluster: str, site: str) -> None:
    if policy is None:
        raise ClusterIdentityError("this hub has no fleet file: no cluster's SVID would be admitted; add one first")
    labels = policy.fleet.clusters.get(cluster)
    if labels is None:
        raise ClusterIdentityError(
            f"cluster {cluster!r} is not in the fleet file: add it there first (its SVID would be refused)"
        )
    if "site" in labels and labels["site"] != site:
        raise ClusterIdentityError(f"cluster {cluster!r} is at site {labels['site']!r} in the fleet file, not {site!r}")
