"""The syncer's side of the handoff: each bundle it verified and applied goes, bytes unchanged, into the
ConfigMap the webhook replicas follow (edgetrust/bundles/handoff.py says why a ConfigMap, and why it is not
trusted; admission/follow.py verifies it on the other side).

Written by server-side apply with the syncer's field manager, forced: the ConfigMap is ours alone, and a hand
edit of it is put back by the next handoff rather than blocking it (it could not have changed what a replica
enforces anyway: replicas verify). A handoff that fails (API server, a bundle too large for a ConfigMap) does
not undo the NetworkPolicies applied; it is reported (`admission` in the status report) and tried again on
the next sync.
"""

from __future__ import annotations

from typing import Protocol

from edgetrust._internal import kube as kubeapi
from edgetrust.bundles import handoff
from edgetrust.bundles.format import Bundle
from syncer.kube import FIELD_MANAGER, MANAGED_BY, apply_configmap


class Handoff(Protocol):
    async def publish(self, blob: bytes, bundle: Bundle) -> None:
        """Hand `blob` (verified, applied) to the webhook replicas; raises a BundleError when it could not."""


class ConfigMapHandoff:
    def __init__(self, config: kubeapi.Source, *, namespace: str, timeout_s: float = 10.0) -> None:
        self._api = kubeapi.KubeConnection(config, timeout_s=timeout_s, user_agent=FIELD_MANAGER)
        self._namespace = namespace
        self._path = f"/api/v1/namespaces/{namespace}/configmaps/{handoff.CONFIGMAP}"

    async def publish(self, blob: bytes, bundle: Bundle) -> None:
        obj = handoff.configmap(
            blob, namespace=self._namespace, revision=bundle.revision, labels={MANAGED_BY[0]: MANAGED_BY[1]}
        )
        what = f"handing bundle {bundle.revision} to the webhook (ConfigMap {self._namespace}/{handoff.CONFIGMAP})"
        await apply_configmap(self._api, self._path, obj, what=what)

    async def aclose(self) -> None:
        await self._api.aclose()
