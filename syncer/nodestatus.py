"""The syncer relays the hub's signed node attestation document to the webhook replicas (issue 16: a pod is
never bound to a node whose attestation is revoked or too old).

After each sync (at most every `interval_s`, and at once when the revocation list moved), it fetches its
cluster's document from the hub (`GET /v1/fleet/clusters/<cluster>/nodes`, answered to this cluster's SVID
only), verifies it with the hub's revocation key (signature, this cluster, a sequence not below the last one
relayed), and writes it, bytes unchanged, with the signed revocation list it holds, into the ConfigMap
`edgetrust-node-attestation` (edgetrust/bundles/nodestatus.py). The webhook verifies both again: the ConfigMap
is not trusted, and the syncer's check only keeps it from handing over what the webhook would refuse anyway.

A failure (hub, API server, a document that does not verify) is logged and kept in `last_error`, never stops
the syncer: the webhook's held document then ages, and binding fails closed once nodes pass their max age.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust._internal import kube as kubeapi
from edgetrust.bundles import nodestatus
from edgetrust.bundles.errors import BundleError
from edgetrust.bundles.revocations import RevocationStore
from syncer.kube import FIELD_MANAGER, MANAGED_BY, apply_configmap

log = logging.getLogger("edgetrust.syncer")


class NodeStatusRelay:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[bytes]],
        config: kubeapi.Source,
        *,
        cluster: str,
        namespace: str,
        keys: Mapping[str, ec.EllipticCurvePublicKey],
        revocations: RevocationStore | None,
        interval_s: float = 10.0,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._api = kubeapi.KubeConnection(config, timeout_s=timeout_s, user_agent=FIELD_MANAGER)
        self._cluster = cluster
        self._namespace = namespace
        self._path = f"/api/v1/namespaces/{namespace}/configmaps/{nodestatus.CONFIGMAP}"
        self._keys = dict(keys)
        self._revocations = revocations
        self._interval_s = interval_s
        self._clock = clock
        self._last = float("-inf")
        self._revocations_relayed = -2
        self.sequence = -1  # the last document relayed
        self.last_error = ""

    async def run_once(self, *, force: bool = False) -> bool:
        """Relay now if due (or `force`, or the revocation list moved); True when a document was written."""
        held = self._revocations.current.counter if self._revocations is not None else -1
        due = force or held != self._revocations_relayed or self._clock() - self._last >= self._interval_s
        if not due:
            return False
        self._last = self._clock()
        try:
            blob = await self._fetch()
            found = nodestatus.verify(blob, self._keys, cluster=self._cluster, held=self.sequence)
            revocations = self._revocations.blob if self._revocations is not None else None
            await self._publish(nodestatus.configmap(
                blob, revocations, namespace=self._namespace, sequence=found.sequence,
                labels={MANAGED_BY[0]: MANAGED_BY[1]},
            ))  # fmt: skip
        except BundleError as exc:
            self.last_error = f"{exc.code}: {exc.diagnostics()}"
            log.warning("node attestation status not relayed to the webhook: %s", self.last_error)
            return False
        if self.last_error:
            log.info("node attestation status relayed again")
        self.sequence, self._revocations_relayed, self.last_error = found.sequence, held, ""
        log.debug("node attestation document %d relayed (%d nodes)", found.sequence, len(found.nodes))
        return True

    async def _publish(self, obj: dict[str, object]) -> None:
        what = f"relaying node attestation status (ConfigMap {self._namespace}/{nodestatus.CONFIGMAP})"
        await apply_configmap(self._api, self._path, obj, what=what)

    async def aclose(self) -> None:
        await self._api.aclose()
