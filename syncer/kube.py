"""The few Kubernetes API calls the syncer makes: server-side apply, list by label, read, delete. Errors from the
API server are converted here, with its own message, so a refused apply names the object and the reason.

Apply is server-side apply with our field manager. force=false for anything not already ours, so a field
another manager owns is a conflict (409), reported, never taken over; force=true only on an object carrying
our managed-by label (apply.py decides), so that a hand edit of one of our policies (`kubectl edit` loosening
it) is put back by the next sync instead of blocking every later bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from edgetrust._internal import kube as kubeapi
from edgetrust.bundles.errors import BundleError

FIELD_MANAGER = "edgetrust-syncer"
MANAGED_BY = ("app.kubernetes.io/managed-by", FIELD_MANAGER)
#: NetworkPolicies carrying our label, at most: a longer list is refused, never cut (a cut list would leave
#: policies that left the bundle unpruned, and enforced)
MAX_MANAGED = 10_000

#: where the API server is and who the syncer is to it (kept under this name for the syncer's callers)
KubeConfig = kubeapi.Direct


class KubeError(BundleError):
    code = "kube_error"


class KubeUnreachableError(KubeError):
    code = "kube_unreachable"


class KubeConflictError(KubeError):
    """An object the bundle names exists and is not ours (no managed-by label, or fields another manager owns)."""

    code = "apply_conflict"


class KubeTarget(Protocol):
    """Where NetworkPolicies are applied: the API server (KubeClient), or memory in the fleet simulation."""

    writes: int

    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False, force: bool = False) -> dict[str, Any]: ...

    async def list_managed(self) -> list[dict[str, Any]]: ...

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def delete(self, namespace: str, name: str) -> None: ...


class KubeClient:
    """The syncer's API calls, through the shared client (edgetrust/_internal/kube.py): a kubeconfig, the
    pod's service account or explicit settings, the token file followed as it rotates."""

    def __init__(self, config: kubeapi.Source, *, timeout_s: float = 10.0) -> None:
        self._api = kubeapi.KubeConnection(config, timeout_s=timeout_s, user_agent=FIELD_MANAGER)
        self.writes = 0  # API calls that change state (or would, for dry runs): for tests and benchmarks

    async def aclose(self) -> None:
        await self._api.aclose()

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        base = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
        return f"{base}/{name}" if name else base

    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        metadata = obj["metadata"]
        named = f"{metadata['namespace']}/{metadata['name']}"
        try:
            body = await self._api.apply(
                self._path(metadata["namespace"], metadata["name"]),
                obj,
                field_manager=FIELD_MANAGER,
                force=force,
                dry_run=dry_run,
                what=f"applying NetworkPolicy {named}",
            )
        except kubeapi.KubeStatusError as exc:
            if not dry_run:
                self.writes += 1
            if exc.status == 409:
                raise KubeConflictError(
                    f"NetworkPolicy {named} is also managed by someone else, who owns fields the bundle sets: "
                    f"not taken over ({exc.reason})"
                ) from exc
            raise KubeError(f"applying NetworkPolicy {named}: {exc.reason}") from exc
        except kubeapi.KubeAccessError as exc:
            raise _converted(exc) from exc
        if not dry_run:
            self.writes += 1
        return body

    async def list_managed(self) -> list[dict[str, Any]]:
        try:
            listed = await self._api.list_all(
                "/apis/networking.k8s.io/v1/networkpolicies",
                query=[("labelSelector", f"{MANAGED_BY[0]}={MANAGED_BY[1]}")],
                max_items=MAX_MANAGED,
                what="listing managed NetworkPolicies",
            )
        except kubeapi.KubeStatusError as exc:
            raise KubeError(f"listing managed NetworkPolicies: {exc.reason}") from exc
        except kubeapi.KubeAccessError as exc:
            raise _converted(exc) from exc
        return listed.items

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._api.request(
                "GET", self._path(namespace, name), what=f"reading NetworkPolicy {namespace}/{name}"
            )
        except kubeapi.KubeStatusError as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"reading NetworkPolicy {namespace}/{name}: {exc.reason}") from exc
        except kubeapi.KubeAccessError as exc:
            raise _converted(exc) from exc

    async def delete(self, namespace: str, name: str) -> None:
        try:
            await self._api.request(
                "DELETE", self._path(namespace, name), what=f"deleting NetworkPolicy {namespace}/{name}"
            )
        except kubeapi.KubeStatusError as exc:
            self.writes += 1
            if exc.status != 404:
                raise KubeError(f"deleting NetworkPolicy {namespace}/{name}: {exc.reason}") from exc
            return
        except kubeapi.KubeAccessError as exc:
            raise _converted(exc) from exc
        self.writes += 1


async def apply_configmap(api: kubeapi.KubeConnection, path: str, obj: dict[str, object], *, what: str) -> None:
    """Write one ConfigMap the syncer owns (a handoff to the webhook) by forced server-side apply, the shared
    client's errors converted: written once for the bundle handoff and the node attestation relay."""
    try:
        await api.apply(path, obj, field_manager=FIELD_MANAGER, force=True, what=what)
    except kubeapi.KubeStatusError as exc:
        raise KubeError(f"{what}: {exc.reason}") from exc
    except kubeapi.KubeAccessError as exc:
        raise _converted(exc) from exc


def _converted(exc: kubeapi.KubeAccessError) -> KubeError:
    """The shared client's error as the syncer's: unreachable (retried later, last known good kept) or not."""
    if isinstance(exc, kubeapi.KubeTransportError):
        return KubeUnreachableError(str(exc))
    return KubeError(str(exc))
