"""The signed node attestation document of one cluster (format and why: edgetrust/bundles/nodestatus.py).

Built on request from the store: the nodes of the cluster's site (their `site` claim, stored at enrollment)
keyed by their `node` claim (the Kubernetes node name they enrolled with), each with its SPIFFE ID, the time
of its last quote-verified enrollment or renewal, and whether it is revoked (the device's status or the
revocation list). Nothing in it comes from the cluster: not the node names a kubelet reports, not labels.

The cluster's site is the fleet file's `site` label, else the site alias its identity entries hang under
(`trustctl fleet cluster add <c> --site S`); a cluster with neither gets no document (refused: it has no
nodes the hub could vouch for). Two enrolled devices claiming one node name at a site are both listed as
revoked under that name: the hub cannot say which one the kubelet is, so neither may be bound to.

The sequence is the issue time in milliseconds, kept strictly growing per process; replicas of one hub share
a clock closely enough, and a replica whose clock lags only has its documents refused as replays by webhooks
that hold a newer one (they keep the newer one: nothing becomes bindable by it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edgetrust.bundles import nodestatus
from edgetrust.bundles.signing import SigningKey
from edgetrust.spiffe.id import TrustDomain
from trustd.errors import NotFoundError
from trustd.server.aliases import parse_alias
from trustd.server.policy.distribution import PolicyBundles
from trustd.server.revocations import Revocations
from trustd.server.store import Store

#: how long one site's node list is reused across its clusters' requests
CACHE_S = 1.0


class NoNodeStatusError(NotFoundError):
    code = "no_node_status"


class NodeAttestations:
    def __init__(
        self,
        store: Store,
        revocations: Revocations,
        policy: PolicyBundles,
        trust_domain: TrustDomain,
        *,
        key: SigningKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._revocations = revocations
        self._policy = policy
        self._trust_domain = trust_domain
        self._key = key if key is not None else revocations.signing_key
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sequence = 0
        #: site -> (when read, its nodes): one scan of the devices per site and second, not one per cluster poll;
        #: a revocation here clears it at once (another replica's within REFRESH_S, as the revocation list)
        self._sites: dict[str, tuple[float, dict[str, nodestatus.NodeRecord]]] = {}
        revocations.on_change(self._sites.clear)

    def site_of(self, cluster: str) -> str:
        labels = self._policy.fleet.clusters.get(cluster)
        if labels is None:
            raise NoNodeStatusError(f"cluster {cluster!r} is not in the fleet file")
        if labels.get("site"):
            return labels["site"]
        identity = f"spiffe://{self._trust_domain}/cluster/{cluster}"
        sites = set()
        for entry in self._store.entries():
            alias = parse_alias(self._trust_domain, entry.parent_id) if entry.spiffe_id == identity else None
            if alias is not None and alias[0] == "site":
                sites.add(alias[1])
        if len(sites) != 1:
            raise NoNodeStatusError(
                f"cluster {cluster!r} has no site (a fleet `site` label, or `trustctl fleet cluster add {cluster} "
                "--site S`): the hub cannot say which nodes are its own"
            )
        return sites.pop()

    def document(self, cluster: str) -> bytes:
        site = self.site_of(cluster)
        group = self._policy.fleet.group_of(cluster)
        max_age = group.node_attestation_max_age if group is not None else nodestatus.DEFAULT_MAX_AGE_S
        cached = self._sites.get(site)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            nodes = cached[1]
        else:
            nodes = self._nodes_of(site)
            self._sites[site] = (time.monotonic(), nodes)
        now = self._clock()
        with self._lock:
            sequence = self._last_sequence = max(self._last_sequence + 1, int(now * 1000))
        return nodestatus.build(
            cluster=cluster, site=site, sequence=sequence, issued_at=now, max_age_s=max_age, nodes=nodes, key=self._key
        )

    def _nodes_of(self, site: str) -> dict[str, nodestatus.NodeRecord]:
        nodes: dict[str, nodestatus.NodeRecord] = {}
        claimed: dict[str, int] = {}
        for device in self._store.devices():
            name = device.claims.get("node")
            if device.claims.get("site") != site or not name:
                continue
            claimed[name] = claimed.get(name, 0) + 1
            revoked = device.status != "enrolled" or self._revocations.is_revoked(device.spiffe_id)
            nodes[name] = nodestatus.NodeRecord(device.spiffe_id, device.attested_at, revoked)
        for name, count in claimed.items():
            if count > 1:  # see the module doc: neither device may be bound to under that name
                nodes[name] = nodestatus.NodeRecord(nodes[name].spiffe_id, 0.0, True)
        return nodes
