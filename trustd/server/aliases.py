"""Node aliases: a registration entry's parent may name a SET of nodes instead of one, as SPIRE's node aliases do.

`spiffe://<td>/alias/site/<site>` stands for every enrolled, unrevoked node whose claim `site` is `<site>`, so
an entry under it (a cluster's syncer, selected by `k8s:ns` and `k8s:sa`) is served by whichever node of the
cluster the pod is scheduled on. Membership is read from the claims the hub stored when the node enrolled
(never from the request), so a node cannot move itself into another site's alias without enrolling again.
The site claim is as strong as enrollment itself: the operator's EK roots and reference values admit the device,
and its claims name it (its SPIFFE ID is rendered from the same claims).

`/alias` is a reserved namespace (`edgetrust.spiffe.id.RESERVED_NAMESPACES`): no node may be named under it
and no entry may take such a name, so an alias is never anybody's identity, only a parent.

A cluster's own identity, `spiffe://<td>/cluster/<name>`, is reserved too: a node must never mint it. The one
exception is `cluster_identity_reason`: an entry naming exactly a cluster ID, under a site alias, selected by
both `k8s:ns` and `k8s:sa` (what `POST /v1/fleet/clusters/{cluster}/identity` creates, operators only); any
other entry naming a reserved ID stays unserved.
"""

from __future__ import annotations

from collections.abc import Mapping

from edgetrust.spiffe.id import SpiffeId, TrustDomain
from trustd.errors import InvalidSpiffeIdError

ALIAS_NAMESPACE = "alias"
#: the node claims an alias may be keyed by; one for now (a cluster lives at one site)
ALIAS_CLAIMS = ("site",)


def site_alias(trust_domain: TrustDomain, site: str) -> SpiffeId:
    """The alias of every node of `site`; `site` must be one SPIFFE ID path segment."""
    return SpiffeId.parse(f"spiffe://{trust_domain}/{ALIAS_NAMESPACE}/site/{site}")


def parse_alias(trust_domain: TrustDomain, parent_id: str) -> tuple[str, str] | None:
    """(claim, value) when `parent_id` is an alias of this trust domain, else None (e.g. a node's own ID)."""
    try:
        parsed = SpiffeId.parse(parent_id)
    except InvalidSpiffeIdError:
        return None
    segments = parsed.path.split("/")[1:]
    if parsed.trust_domain != trust_domain or len(segments) != 3 or segments[0] != ALIAS_NAMESPACE:
        return None
    claim, value = segments[1], segments[2]
    return (claim, value) if claim in ALIAS_CLAIMS else None


def aliases_of(trust_domain: TrustDomain, claims: Mapping[str, str]) -> tuple[str, ...]:
    """The aliases an enrolled node with `claims` (as stored at enrollment) belongs to."""
    found = []
    for claim in ALIAS_CLAIMS:
        value = claims.get(claim)
        if value is None:
            continue
        try:
            found.append(str(SpiffeId.parse(f"spiffe://{trust_domain}/{ALIAS_NAMESPACE}/{claim}/{value}")))
        except InvalidSpiffeIdError:
            continue  # a claim that is no path segment names no alias
    return tuple(found)


def cluster_identity_reason(
    trust_domain: TrustDomain, spiffe_id: str, parent_id: str, selectors: tuple[str, ...]
) -> str | None:
    """Why this entry is not a cluster workload's identity under a site alias, or None when it is one."""
    try:
        parsed = SpiffeId.parse(spiffe_id)
    except InvalidSpiffeIdError as exc:
        return exc.diagnostics()
    segments = parsed.path.split("/")[1:]
    if parsed.trust_domain != trust_domain or len(segments) != 2 or segments[0] != "cluster":
        return f"{spiffe_id} is not a cluster's identity (spiffe://{trust_domain}/cluster/<name>)"
    if parse_alias(trust_domain, parent_id) is None:
        return f"a cluster's identity is served only under a node alias, not under {parent_id}"
    kinds = {s.split(":", 2)[1] for s in selectors if s.startswith("k8s:") and s.count(":") >= 2}
    if not {"ns", "sa"} <= kinds or any(not s.startswith("k8s:") for s in selectors):
        return "a cluster's identity is selected by k8s:ns and k8s:sa (a namespace and service account) only"
    return None
