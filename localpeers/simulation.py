"""An in-memory stand-in for a cluster's API server, for the fleet simulation benchmark only: 10,000 real
kube-apiservers cannot run on one machine, so the agents' apply goes here. Everything else is the real agent."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from syncer.kube import KubeError


class InMemoryCluster:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes = 0

    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        metadata = obj.get("metadata") or {}
        key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        if not all(key):
            raise KubeError("simulated API server: namespace and name are required")
        stored = copy.deepcopy(dict(obj))
        if not dry_run:
            self.objects[key] = stored
            self.writes += 1
        return stored

    async def list_managed(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objects.values()]

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def delete(self, namespace: str, name: str) -> None:
        self.objects.pop((namespace, name), None)
        self.writes += 1
