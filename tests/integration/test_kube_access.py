"""The shared Kubernetes client (edgetrust/_internal/kube.py) against a real kube-apiserver: every way of
finding it and proving who we are (kubeconfig, in-cluster service account, direct settings with a token or a
client certificate), a bound service-account token followed as it rotates, every page of a list, a list over
its limit refused whole, server-side apply forcing only when asked, and errors as the module's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgetrust._internal import kube as kubeapi
from localpeers.hub import free_port
from localpeers.kube import KubeAPI, ProjectedAccount, running_kube_apiserver
from localpeers.tlsca import TestCA

pytestmark = pytest.mark.integration

SITES = [f"site-{i}" for i in range(7)]
READ_NAMESPACES: list[dict[str, object]] = [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list"]}]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("kube-ca"))


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[KubeAPI]:
    with running_kube_apiserver(tmp_path_factory.mktemp("kube"), ca) as api:
        with api.client() as client:
            for name in SITES:
                made = client.post("/api/v1/namespaces", json={"metadata": {"name": name}})
                assert made.status_code == 201, made.text
        yield api


def namespaces(kube: KubeAPI) -> set[str]:
    with kube.client() as client:
        return {item["metadata"]["name"] for item in client.get("/api/v1/namespaces").json()["items"]}


async def listed(source: kubeapi.Source, *, page_size: int = 500, max_items: int = 1000) -> kubeapi.KubeList:
    connection = kubeapi.KubeConnection(source)
    try:
        return await connection.list_all(
            "/api/v1/namespaces", what="listing namespaces", max_items=max_items, page_size=page_size
        )
    finally:
        await connection.aclose()


def names(found: kubeapi.KubeList) -> set[str]:
    return {item["metadata"]["name"] for item in found.items}


def test_kubeconfig_with_a_token_and_with_a_client_certificate(kube: KubeAPI, ca: TestCA, tmp_path: Path) -> None:
    with_token = kube.write_kubeconfig(tmp_path / "token.kubeconfig")
    assert names(asyncio.run(listed(kubeapi.Kubeconfig(with_token)))) == namespaces(kube)

    cert = ca.issue("cert-reader", client=True)
    kube.grant({"kind": "User", "name": "cert-reader"}, "cert-reader", READ_NAMESPACES)
    config = json.loads(with_token.read_text())
    config["users"] = [{"name": "admin", "user": {"client-certificate": str(cert.cert), "client-key": str(cert.key)}}]
    with_cert = tmp_path / "cert.kubeconfig"
    with_cert.write_text(json.dumps(config))
    assert names(asyncio.run(listed(kubeapi.Kubeconfig(with_cert)))) == namespaces(kube)

    # the same certificate given directly; and the user it names may list namespaces, nothing else
    direct = kubeapi.Direct(kube.url, ca_file=kube.ca_file, client_cert=cert.cert, client_key=cert.key)
    assert names(asyncio.run(listed(direct))) == namespaces(kube)

    async def read_secrets() -> None:
        connection = kubeapi.KubeConnection(direct)
        try:
            await connection.request("GET", "/api/v1/secrets", what="listing secrets")
        finally:
            await connection.aclose()

    with pytest.raises(kubeapi.KubeStatusError) as refused:
        asyncio.run(read_secrets())
    assert refused.value.status == 403
    assert 'User "cert-reader" cannot list resource "secrets"' in refused.value.reason


def test_in_cluster_service_account_token_is_followed_as_it_rotates(kube: KubeAPI, tmp_path: Path) -> None:
    """The kubelet replaces a bound token long before it expires; the client must pick up the new one without
    being rebuilt. The old token is revoked (its bound Secret deleted) before the rotation, so only a client
    that re-reads the file gets through afterwards."""
    kube.service_account("edge", "inventory")
    kube.grant({"kind": "ServiceAccount", "name": "inventory", "namespace": "edge"}, "edge-inventory", READ_NAMESPACES)
    first = kube.service_account_token("edge", "inventory", bound_to="token-1")
    second = kube.service_account_token("edge", "inventory", bound_to="token-2")
    account = ProjectedAccount(tmp_path / "serviceaccount", first, kube.ca_file)
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube.port)}
    source = kubeapi.InCluster(account.directory, environ)

    async def scenario() -> tuple[set[str], int, set[str]]:
        connection = kubeapi.KubeConnection(source)
        try:
            before = await connection.list_all("/api/v1/namespaces", what="listing namespaces", max_items=100)
            await asyncio.to_thread(kube.revoke_service_account_token, "edge", "token-1", first)
            try:
                await connection.list_all("/api/v1/namespaces", what="listing namespaces", max_items=100)
                revoked = 0
            except kubeapi.KubeStatusError as exc:
                revoked = exc.status
            account.rotate(second)
            after = await connection.list_all("/api/v1/namespaces", what="listing namespaces", max_items=100)
            return names(before), revoked, names(after)
        finally:
            await connection.aclose()

    before, revoked, after = asyncio.run(scenario())
    assert set(SITES) <= before
    assert revoked == 401  # the revoked token was the one in use
    assert after == namespaces(kube)  # the rotated file was read again, by the same connection


def test_every_page_of_a_list_is_listed(kube: KubeAPI) -> None:
    direct = kubeapi.Direct(kube.url, kube.token, kube.ca_file)
    everything = namespaces(kube)
    paged = asyncio.run(listed(direct, page_size=2))
    assert paged.pages == (len(everything) + 1) // 2  # pages of 2, the last one complete
    assert paged.pages > 3
    assert names(paged) == everything
    assert len(paged.items) == len(everything)  # nothing twice
    assert paged.kind == "NamespaceList"
    assert paged.api_version == "v1"


@pytest.mark.parametrize("page_size", [2, 500])
def test_a_list_longer_than_the_limit_is_refused_never_cut(kube: KubeAPI, page_size: int) -> None:
    """Over the limit by one object, on the last page or (by the API server's remainingItemCount) early."""
    direct = kubeapi.Direct(kube.url, kube.token, kube.ca_file)
    count = len(namespaces(kube))
    exact = asyncio.run(listed(direct, page_size=page_size, max_items=count))
    assert len(exact.items) == count
    with pytest.raises(kubeapi.KubeListLimitError, match=f"more than {count - 1} objects, the limit"):
        asyncio.run(listed(direct, page_size=page_size, max_items=count - 1))
    with pytest.raises(kubeapi.KubeListLimitError):
        asyncio.run(listed(direct, page_size=page_size, max_items=0))


def test_server_side_apply_forces_only_when_asked(kube: KubeAPI) -> None:
    direct = kubeapi.Direct(kube.url, kube.token, kube.ca_file)
    path = "/api/v1/namespaces/site-0/configmaps/settings"

    def config_map(value: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "site-0"},
            "data": {"mode": value},
        }

    async def scenario() -> tuple[dict[str, Any], int, dict[str, Any], dict[str, Any]]:
        connection = kubeapi.KubeConnection(direct)
        try:
            first = await connection.apply(
                path, config_map("strict"), field_manager="owner", force=False, what="applying settings"
            )
            try:
                await connection.apply(path, config_map("open"), field_manager="other", force=False, what="applying")
                conflict = 0
            except kubeapi.KubeStatusError as exc:
                conflict = exc.status
            dry = await connection.apply(
                path, config_map("open"), field_manager="other", force=True, dry_run=True, what="applying"
            )
            forced = await connection.apply(path, config_map("open"), field_manager="other", force=True, what="ok")
            return first, conflict, dry, forced
        finally:
            await connection.aclose()

    first, conflict, dry, forced = asyncio.run(scenario())
    assert first["data"] == {"mode": "strict"}
    assert conflict == 409  # a field another manager owns is not taken over without force
    assert dry["data"] == {"mode": "open"}
    assert forced["data"] == {"mode": "open"}
    with kube.client() as client:
        stored = client.get(path).json()
    assert stored["data"] == {"mode": "open"}
    assert {entry["manager"] for entry in stored["metadata"]["managedFields"]} == {"other"}


def test_failures_are_the_modules_own_errors(kube: KubeAPI, tmp_path: Path) -> None:
    async def namespace_list(source: kubeapi.Source) -> None:
        await listed(source)

    with pytest.raises(kubeapi.KubeStatusError) as wrong_token:
        asyncio.run(namespace_list(kubeapi.Direct(kube.url, "not-a-token", kube.ca_file)))
    assert wrong_token.value.status == 401
    with pytest.raises(kubeapi.KubeTransportError, match="is unreachable"):
        asyncio.run(namespace_list(kubeapi.Direct(f"https://127.0.0.1:{free_port()}", kube.token, kube.ca_file)))
    with pytest.raises(kubeapi.KubeTransportError, match="is unreachable"):  # a server the CA did not sign
        asyncio.run(namespace_list(kubeapi.Direct(kube.url, kube.token, TestCA(tmp_path / "other").ca_file)))
    missing = tmp_path / "missing-token"
    with pytest.raises(kubeapi.KubeConfigError, match="missing-token is missing, unreadable or empty"):
        asyncio.run(namespace_list(kubeapi.Direct(kube.url, ca_file=kube.ca_file, token_file=missing)))
    with pytest.raises(kubeapi.KubeConfigError, match="Service host/port is not set"):
        asyncio.run(namespace_list(kubeapi.InCluster(tmp_path, {})))
