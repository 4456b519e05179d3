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
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from admission.errors import AdmissionError

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


@dataclass(frozen=True, slots=True)
class KubeSource:
    """Where the webhook lists objects from: the API server, with the pod's service account or a test token."""

    url: str
    token: str
    ca_file: Path | None = None

    @classmethod
    def in_cluster(cls) -> KubeSource:
        account = Path("/var/run/secrets/kubernetes.io/serviceaccount")
        return cls("https://kubernetes.default.svc", (account / "token").read_text().strip(), account / "ca.crt")


class InventorySync:
    """List the configured resources every `interval_s` and replace `data.inventory` in OPA.

    Resources are API paths like `api/v1/namespaces` or `apis/networking.k8s.io/v1/ingresses`: the same
    resources Gatekeeper's `Config` lists under `sync.syncOnly`.
    """

    def __init__(
        self,
        source: KubeSource,
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
        verify: ssl.SSLContext | bool = True
        if source.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(source.ca_file))
        self._http = httpx.AsyncClient(
            base_url=source.url, headers={"Authorization": f"Bearer {source.token}"}, verify=verify, timeout=10
        )
        self._task: asyncio.Task[None] | None = None

    async def sync_once(self) -> int:
        objects: list[Mapping[str, Any]] = []
        for resource in self._resources:
            objects.extend(await self._list(resource, self._inventory.max_objects + 1 - len(objects)))
        self._inventory.replace(objects)
        await self._target.set_inventory(self._inventory.tree)
        return len(self._inventory)

    async def _list(self, resource: str, room: int) -> list[Mapping[str, Any]]:
        """Every object of one resource, page by page (the API server cuts a list at `limit` and hands back a
        `continue` token): stopping at the first page would sync a silently partial inventory."""
        objects: list[Mapping[str, Any]] = []
        token = ""
        while True:
            params = {"limit": str(max(1, min(room - len(objects), self._page_size)))}
            if token:
                params["continue"] = token
            try:
                answer = await self._http.get(f"/{resource}", params=params)
            except httpx.HTTPError as exc:
                raise InventoryError(f"listing {resource}: {exc}") from exc
            if answer.status_code != 200:
                raise InventoryError(f"listing {resource}: the API server answered {answer.status_code}")
            try:
                body = answer.json()
            except ValueError as exc:
                raise InventoryError(f"listing {resource}: the answer is not JSON") from exc
            if not isinstance(body, dict) or not isinstance(body.get("items") or [], list):
                raise InventoryError(f"listing {resource}: the answer is not a Kubernetes list")
            api_version = str(body.get("apiVersion", "v1"))
            kind = str(body.get("kind", "")).removesuffix("List")
            for item in body.get("items") or []:
                if isinstance(item, dict):
                    objects.append({"apiVersion": api_version, "kind": kind, **item})
            metadata = body.get("metadata")
            token = str(metadata.get("continue") or "") if isinstance(metadata, dict) else ""
            if not token:
                return objects
            if len(objects) >= room:
                return objects  # over the limit: replace() refuses the lot

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
        await self._http.aclose()
