"""Attestation-aware binding: a pod is never bound to a node whose attestation is revoked or older than its
cluster group's maximum age (issue 16).

The webhook checks CREATE of `pods/binding` (the scheduler's Binding: `target.name` is the node) and CREATE of
pods that name `spec.nodeName` themselves, against the hub's signed node attestation document and the hub's
signed revocation list, which the syncer relays in the ConfigMap `edgetrust-node-attestation`
(edgetrust/bundles/nodestatus.py). The ConfigMap is not trusted: each replica verifies both with the hub's
revocation key, checks that the document is this cluster's, and refuses a document or list older than the one
it holds (a replay). It never looks at Node objects, labels or annotations: the kubelet writes those, so a node
could pose as another; the node's name is mapped to its identity by the hub alone (the `node` claim it
enrolled with).

It refuses, naming the node and why:
- no verified document held yet (fail closed: "no node attestation status from the hub yet");
- a node the document does not list (never attested at the hub, or not of this cluster's site);
- a node revoked (in the document, or in the revocation list, whichever is newer says so);
- a node whose last attestation is older than the group's maximum age, judged by this replica's clock: a
  document that stops coming (hub or syncer away) makes nodes stale on its own.
Exempt namespaces stay exempt (the chart exempts its own), so the node agent's DaemonSet still schedules on a
node that has not enrolled yet: enrolling is how it becomes bindable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from admission.errors import AdmissionError, ConfigError
from admission.follow import ConfigMapFollower, ConfigMapReader, HandoffError
from edgetrust._internal import kube as kubeapi
from edgetrust.bundles import nodestatus
from edgetrust.bundles.errors import BundleError, RollbackError
from edgetrust.bundles.revocations import RevocationList, verify_revocations

log = logging.getLogger("edgetrust.admission")

NO_DOCUMENT = "no node attestation status from the hub yet"


class NodeGateError(AdmissionError):
    """The node attestation ConfigMap could not be read, or what it holds is refused; what is held stays."""

    code = "node_status_refused"


class NodeGate(ConfigMapFollower):
    def __init__(
        self,
        kube: kubeapi.KubeConnection,
        *,
        namespace: str,
        keys: Mapping[str, ec.EllipticCurvePublicKey],
        cluster: str,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ConfigError("node attestation needs the hub's revocation key (node_attestation_key)")
        if not cluster:
            raise ConfigError("node attestation needs this cluster's name (cluster)")
        super().__init__(ConfigMapReader(kube, namespace, nodestatus.CONFIGMAP), interval_s, "admission-node-gate")
        self._keys = dict(keys)
        self._cluster = cluster
        self._clock = clock
        self.held: nodestatus.NodeAttestation | None = None
        self.revocations = RevocationList.empty()
        self.last_failure = ""

    # -- the decision ------------------------------------------------------------------------------------
    def refusal(self, node: str) -> str | None:
        """Why binding a pod to `node` is refused now, or None when the node may be bound to."""
        held = self.held
        if held is None:
            return f"{NO_DOCUMENT}: binding to node {node!r} refused (fail closed)"
        record = held.nodes.get(node)
        if record is None or record.last_attested <= 0:
            return (
                f"node {node!r} was never attested at the hub (not in cluster {held.cluster}'s node attestation "
                f"document {held.sequence}, site {held.site}): binding refused"
            )
        if record.revoked or record.spiffe_id in self.revocations.spiffe_ids:
            return f"node {node!r} ({record.spiffe_id}) is revoked at the hub: binding refused"
        age = self._clock() - record.last_attested
        if age > held.max_age_s:
            return (
                f"node {node!r} ({record.spiffe_id}) last attested at the hub {age:.0f} s ago, over the cluster "
                f"group's maximum of {held.max_age_s} s: binding refused until it renews with a fresh quote"
            )
        return None

    @property
    def status(self) -> dict[str, Any]:
        """For /readyz: what this replica holds."""
        return {
            "sequence": self.held.sequence if self.held else None,
            "revocations": self.revocations.counter,
            "last_failure": self.last_failure,
        }

    # -- following the ConfigMap ---------------------------------------------------------------------------
    async def check_once(self) -> str:
        """Read the ConfigMap once: "absent", "unchanged", "updated", or NodeGateError (what is held stays)."""
        try:
            state, obj = await self._reader.read()
        except HandoffError as exc:
            raise self._failed(exc.diagnostics()) from exc
        if obj is None:
            return state
        try:
            blob = nodestatus.configmap_item(obj, nodestatus.KEY_NODES)
            if blob is None:
                raise NodeGateError(f"ConfigMap {nodestatus.CONFIGMAP} has no {nodestatus.KEY_NODES}")
            held = self.held.sequence if self.held is not None else -1
            found = nodestatus.verify(blob, self._keys, cluster=self._cluster, held=held)
            revocations = self.revocations
            listed = nodestatus.configmap_item(obj, nodestatus.KEY_REVOCATIONS)
            if listed is not None:
                revocations, _ = verify_revocations(listed, self._keys)
                if revocations.counter < self.revocations.counter:
                    raise RollbackError(
                        f"revocation list {revocations.revision} is older than the one held "
                        f"({self.revocations.revision}): refused"
                    )
        except (BundleError, NodeGateError) as exc:
            raise self._failed(f"{exc.code}: {exc.diagnostics()}") from exc
        self.held, self.revocations, self.last_failure = found, revocations, ""
        log.info(
            "node attestation document %d of cluster %s: %d nodes", found.sequence, found.cluster, len(found.nodes)
        )
        return "updated"

    def _failed(self, why: str) -> NodeGateError:
        self.last_failure = why
        return NodeGateError(f"ConfigMap {nodestatus.CONFIGMAP} refused (what is held stays): {why}")
