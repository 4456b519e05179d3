"""`data.inventory`: the other cluster objects some templates need (unique ingress hosts, namespace labels),
shaped as Gatekeeper's sync shapes them and bounded in memory.

    data.inventory.namespace[<namespace>][<apiVersion>][<kind>][<name>] = object
    data.inventory.cluster[<apiVersion>][<kind>][<name>] = object

Objects are trimmed of managedFields and the last-applied annotation before they are kept, the way
Gatekeeper's sync does not, because on an edge node every megabyte counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from admission.errors import AdmissionError
from edgetrust._internal import kube as kubeapi

log = logging.getLogger("edgetrust.admission")
MAX_OBJECTS = 20_000
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class InventoryError(AdmissionError):
    code = "inventory_error"


def trim(obj: Mapping[str, Any]) -> dict[str, Any]:
    trimmed = dict(obj)
    metadata = dict(trimmed.get("metadata") or {})
    metadata.pop("managedFields", None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and LAST_APPLIED in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    trimmed["metadata"] = metadata
    return trimmed


class Inventory:
    """The synced objects, and namespace labels for namespaceSelector matching."""

    def __init__(self, *, max_objects: int = MAX_OBJECTS) -> None:
        self._max = max_objects
        self._tree: dict[str, Any] = {"namespace": {}, "cluster": {}}
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def max_objects(self) -> int:
        return self._max

    @property
    def tree(self) -> Mapping[str, Any]:
        return self._tree

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        return self._namespace_labels.get(namespace)

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Swap in a whole new inventory, or raise InventoryError and keep the old one.

        Over the object limit nothing is replaced: a partial inventory would let a template that checks
        uniqueness (ingress hosts) or a namespaceSelector admit what the missing objects would refuse.
        """
        tree: dict[str, Any] = {"namespace": {}, "cluster": {}}
        labels: dict[str, dict[str, str]] = {}
        count = 0
        for obj in objects:
            if count >= self._max:
                raise InventoryError(
                    f"the cluster holds over {self._max} objects of the synced kinds, the inventory's limit; "
                    "keeping the last complete inventory"
                )
            metadata = obj.get("metadata") or {}
            name, namespace = metadata.get("name"), metadata.get("namespace")
            api_version, kind = obj.get("apiVersion"), obj.get("kind")
            if not all(isinstance(v, str) and v for v in (name, api_version, kind)):
                continue
            branch = tree["namespace"].setdefault(namespace, {}) if namespace else tree["cluster"]
            branch.setdefault(api_version, {}).setdefault(kind, {})[name] = trim(obj)
            if kind == "Namespace" and api_version == "v1":
                raw = metadata.get("labels") or {}
                labels[str(name)] = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            count += 1
        self._tree, self._namespace_labels, self._count = tree, labels, count


class InventoryTarget(Protocol):
    async def set_inventory(self, inventory: Mapping[str, Any]) -> None: ...


#: where the webhook lists objects from: explicit settings (URL, CA, a token or token file), or
#: `kubeapi.InCluster()` / `kubeapi.Kubeconfig(path)`; every form goes through edgetrust/_internal/kube.py
KubeSource = kubeapi.Direct


class InventorySync:
    """List the configured resources every `interval_s` and replace `data.inventory` in OPA.

    Resources are API paths like `api/v1/namespaces` or `apis/networking.k8s.io/v1/ingresses`: the same
    resources Gatekeeper's `Config` lists under `sync.syncOnly`.
    """

    def __init__(
        self,
        source: kubeapi.Source,
        resources: Sequence[str],
        inventory: Inventory,
        target: InventoryTarget,
        *,
        interval_s: float = 30.0,
        page_size: int = 500,
    ) -> None:
        self._source = source
        self._resources = tuple(resources)
        self._inventory = inventory
        self._target = target
        self._interval = interval_s
        self._page_size = page_size
        self._api = kubeapi.KubeConnection(source, timeout_s=10, user_agent="edgetrust-admission")
        self._task: asyncio.Task[None] | None = None

    async def sync_once(self) -> int:
        objects: list[Mapping[str, Any]] = []
        for resource in self._resources:
            objects.extend(await self._list(resource, self._inventory.max_objects - len(objects)))
        self._inventory.replace(objects)
        await self._target.set_inventory(self._inventory.tree)
        return len(self._inventory)

    async def _list(self, resource: str, room: int) -> list[Mapping[str, Any]]:
        """Every object of one resource, all pages (stopping at the first would sync a silently partial
        inventory); more than `room` objects is refused whole, the last complete inventory kept."""
        try:
            listed = await self._api.list_all(
                f"/{resource}", what=f"listing {resource}", max_items=room, page_size=self._page_size
            )
        except kubeapi.KubeListLimitError as exc:
            raise InventoryError(
                f"the cluster holds over {self._inventory.max_objects} objects of the synced kinds, the "
                "inventory's limit; keeping the last complete inventory"
            ) from exc
        except kubeapi.KubeStatusError as exc:
            raise InventoryError(f"listing {resource}: the API server answered {exc.status}") from exc
        except kubeapi.KubeAccessError as exc:
            raise InventoryError(str(exc)) from exc
        api_version = listed.api_version or "v1"
        kind = listed.kind.removesuffix("List")
        return [{"apiVersion": api_version, "kind": kind, **item} for item in listed.items]

    async def run(self) -> None:
        while True:
            try:
                count = await self.sync_once()
                log.debug("inventory synced: %d objects", count)
            except AdmissionError as exc:
                log.warning("inventory sync failed, keeping the last one: %s", exc.diagnostics())
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._api.aclose()
