"""The few Kubernetes API calls the syncer makes: server-side apply, list by label, read, delete. Errors from the
API server are converted here, with its own message, so a refused apply names the object and the reason.

Apply is server-side apply with our field manager. force=false for anything not already ours, so a field
another manager owns is a conflict (409), reported, never taken over; force=true only on an object carrying
our managed-by label (apply.py decides), so that a hand edit of one of our policies (`kubectl edit` loosening
it) is put back by the next sync instead of blocking every later bundle.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from syncer.errors import SyncerError

FIELD_MANAGER = "edgetrust-syncer"
MANAGED_BY = ("app.kubernetes.io/managed-by", FIELD_MANAGER)


class KubeError(SyncerError):
    code = "kube_error"


class KubeUnreachableError(KubeError):
    code = "kube_unreachable"


class KubeConflictError(KubeError):
    """An object the bundle names exists and is not ours (no managed-by label, or fields another manager owns)."""

    code = "apply_conflict"


@dataclass(frozen=True, slots=True)
class KubeConfig:
    url: str
    token: str
    ca_file: Path | None = None


class KubeTarget(Protocol):
    """Where NetworkPolicies are applied: the API server (KubeClient), or memory in the fleet simulation."""

    writes: int

    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False, force: bool = False) -> dict[str, Any]: ...

    async def list_managed(self) -> list[dict[str, Any]]: ...

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def delete(self, namespace: str, name: str) -> None: ...


class KubeClient:
    def __init__(self, config: KubeConfig, *, timeout_s: float = 10.0) -> None:
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._http = httpx.AsyncClient(
            base_url=config.url,
            headers={"Authorization": f"Bearer {config.token}"},
            verify=verify,
            timeout=timeout_s,
        )
        self.writes = 0  # API calls that change state (or would, for dry runs): for tests and benchmarks

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        base = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
        return f"{base}/{name}" if name else base

    async def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        metadata = obj["metadata"]
        params = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        if dry_run:
            params["dryRun"] = "All"
        answer = await self._request(
            "PATCH",
            self._path(metadata["namespace"], metadata["name"]),
            params=params,
            content=json.dumps(obj),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        if not dry_run:
            self.writes += 1
        if answer.status_code == 409:
            raise KubeConflictError(
                f"NetworkPolicy {metadata['namespace']}/{metadata['name']} is also managed by someone else, who "
                f"owns fields the bundle sets: not taken over ({_reason(answer)})"
            )
        if answer.status_code not in (200, 201):
            raise KubeError(f"applying NetworkPolicy {metadata['namespace']}/{metadata['name']}: {_reason(answer)}")
        body: dict[str, Any] = answer.json()
        return body

    async def list_managed(self) -> list[dict[str, Any]]:
        answer = await self._request(
            "GET",
            "/apis/networking.k8s.io/v1/networkpolicies",
            params={"labelSelector": f"{MANAGED_BY[0]}={MANAGED_BY[1]}"},
        )
        if answer.status_code != 200:
            raise KubeError(f"listing managed NetworkPolicies: {_reason(answer)}")
        items = answer.json().get("items") or []
        return [item for item in items if isinstance(item, dict)]

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        answer = await self._request("GET", self._path(namespace, name))
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise KubeError(f"reading NetworkPolicy {namespace}/{name}: {_reason(answer)}")
        body: dict[str, Any] = answer.json()
        return body

    async def delete(self, namespace: str, name: str) -> None:
        answer = await self._request("DELETE", self._path(namespace, name))
        self.writes += 1
        if answer.status_code not in (200, 202, 404):
            raise KubeError(f"deleting NetworkPolicy {namespace}/{name}: {_reason(answer)}")

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise KubeUnreachableError(f"the API server at {self._http.base_url} is unreachable: {exc}") from exc


def _reason(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("message") or answer.text)[:500]
    except ValueError:
        return f"HTTP {answer.status_code}: {answer.text[:200]}"
