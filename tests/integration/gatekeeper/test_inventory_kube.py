"""data.inventory synced from a real kube-apiserver: a template that needs other objects (unique ingress host)
and a constraint with a namespaceSelector, enforced when the API server calls the webhook."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localpeers.kube import KubeAPI, running_kube_apiserver, validating_webhook
from localpeers.opa_server import opa_server
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, running_webhook
from tests.integration.gatekeeper.conftest import POD, constraint, gatekeeper_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[KubeAPI]:
    with running_kube_apiserver(tmp_path_factory.mktemp("kube"), test_ca) as api:
        yield api


def ingress(name: str, host: str) -> dict[str, Any]:
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    path = {"path": "/", "pathType": "Prefix", "backend": backend}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {"rules": [{"host": host, "http": {"paths": [path]}}]},
    }


RULES: list[dict[str, object]] = [
    {"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]},
    {
        "operations": ["CREATE", "UPDATE"],
        "apiGroups": ["networking.k8s.io"],
        "apiVersions": ["v1"],
        "resources": ["ingresses"],
    },
]


def test_inventory_from_the_cluster_drives_decisions(kube: KubeAPI, tmp_path: Path, test_ca: TestCA) -> None:
    token = tmp_path / "token"
    token.write_text(kube.token)
    token.chmod(0o600)
    constraints = [
        constraint(
            "K8sEdgeUniqueHost",
            "unique-hosts",
            {"match": {"kinds": [{"apiGroups": ["networking.k8s.io"], "kinds": ["Ingress"]}]}},
        ),
        constraint(
            "K8sEdgeContainerLimits",
            "strict-sites",
            {"match": {"kinds": POD, "namespaceSelector": {"matchLabels": {"tier": "strict"}}}},
        ),
    ]
    with kube.client() as client:
        for name, labels in (("legacy", {}), ("shop", {}), ("depot", {"tier": "strict"})):
            answer = client.post("/api/v1/namespaces", json={"metadata": {"name": name, "labels": labels}})
            assert answer.status_code == 201, answer.text
        old = client.post(
            "/apis/networking.k8s.io/v1/namespaces/legacy/ingresses", json=ingress("old-shop", "shop.edge.example")
        )
        assert old.status_code == 201, old.text

        with (
            opa_server(tmp_path / "opa") as opa,
            running_webhook(
                tmp_path / "webhook",
                test_ca,
                policy_dir=policy_dir(tmp_path / "policies", rego=False),
                gatekeeper_dir=gatekeeper_dir(tmp_path / "gk", constraints),
                opa_port=opa.port,
                inventory_resources=("api/v1/namespaces", "apis/networking.k8s.io/v1/ingresses"),
                inventory_interval_s=0.3,
                kube_url=kube.url,
                kube_token_file=token,
                kube_ca_file=kube.ca_file,
            ) as webhook,
        ):
            registered = client.post(
                "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
                json=validating_webhook(webhook.url, test_ca.ca_file, name="edgetrust-gatekeeper", rules=RULES),
            )
            assert registered.status_code == 201, registered.text

            def create_ingress(namespace: str, name: str, host: str, *, dry_run: bool = False) -> httpx.Response:
                params = {"dryRun": "All"} if dry_run else {}
                return client.post(
                    f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses",
                    json=ingress(name, host),
                    params=params,
                )

            deadline = time.monotonic() + 20
            while create_ingress("shop", "probe", "shop.edge.example", dry_run=True).status_code == 201:
                assert time.monotonic() < deadline, "the API server never called the webhook"
                time.sleep(0.2)

            taken = create_ingress("shop", "shop", "shop.edge.example")
            assert taken.status_code == 403
            assert (
                "[unique-hosts] host shop.edge.example is already served by ingress legacy/old-shop"
                in taken.json()["message"]
            )

            assert create_ingress("shop", "shop", "new.edge.example").status_code == 201
            time.sleep(1.0)  # a few sync periods: the inventory now holds shop/shop
            second = create_ingress("legacy", "copycat", "new.edge.example")
            assert second.status_code == 403
            assert "already served by ingress shop/shop" in second.json()["message"]

            unlimited = pod("registry.edge.example/app:1.0", name="app")
            del unlimited["spec"]["containers"][0]["resources"]
            strict = client.post("/api/v1/namespaces/depot/pods", json=unlimited)
            assert strict.status_code == 403
            assert "[strict-sites] container <c0> has no memory limit" in strict.json()["message"]
            assert client.post("/api/v1/namespaces/shop/pods", json=unlimited).status_code == 201

            client.delete("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/edgetrust-gatekeeper")
