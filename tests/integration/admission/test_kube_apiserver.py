"""End to end: a real kube-apiserver calls our webhook through a ValidatingWebhookConfiguration over TLS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from localpeers.kube import KubeAPI, running_kube_apiserver, validating_webhook
from localpeers.opa_server import opa_server
from localpeers.registry import Registry
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, running_webhook, workload
from tests.integration.admission.conftest import Images, signature_policy
from tests.support.sigstore_instance import PrivateSigstore

pytestmark = pytest.mark.integration

WEBHOOK_NAMESPACE = "edgetrust-system"


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[KubeAPI]:
    with running_kube_apiserver(tmp_path_factory.mktemp("kube"), test_ca) as api:
        yield api


def create(client: httpx.Client, namespace: str, obj: dict[str, Any], *, dry_run: bool = False) -> httpx.Response:
    kind = obj["kind"]
    group = {"Pod": "api/v1", "Deployment": "apis/apps/v1", "CronJob": "apis/batch/v1"}[kind]
    resource = kind.lower() + "s"
    params = {"dryRun": "All"} if dry_run else {}
    return client.post(f"/{group}/namespaces/{namespace}/{resource}", json=obj, params=params)


def test_api_server_calls_the_webhook_over_tls(
    kube: KubeAPI,
    tmp_path: Path,
    test_ca: TestCA,
    registry: Registry,
    cosign_keys: tuple[Path, Path],
    sigstore: PrivateSigstore,
    images: Images,
) -> None:
    policies = policy_dir(
        tmp_path / "policies", extra={"signed_images": signature_policy(registry, cosign_keys, sigstore)}
    )
    # its own OPA: a webhook owns its sidecar's policies and data (the session's OPA serves another webhook)
    with kube.client() as client, opa_server(tmp_path / "opa") as opa, ExitStack() as webhook_alive:
        for namespace in ("shop", WEBHOOK_NAMESPACE):
            assert client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}}).status_code == 201
        webhook = webhook_alive.enter_context(
            running_webhook(
                tmp_path / "webhook", test_ca, policy_dir=policies, opa_port=opa.port, registry_ca_file=registry.ca_file
            )
        )
        configuration = validating_webhook(
            webhook.url, test_ca.ca_file, excluded_namespaces=("kube-system", WEBHOOK_NAMESPACE)
        )
        answer = client.post(
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", json=configuration
        )
        assert answer.status_code == 201, answer.text

        unsigned = pod(images.unsigned, name="unsigned")
        deadline = time.monotonic() + 20  # the API server picks up webhook configurations asynchronously
        while create(client, "shop", unsigned, dry_run=True).status_code == 201:
            assert time.monotonic() < deadline, "the API server never called the webhook"
            time.sleep(0.2)

        signed = create(client, "shop", pod(images.signed, name="signed"))
        assert signed.status_code == 201, signed.text

        refused = create(client, "shop", unsigned)
        assert refused.status_code == 403
        message = refused.json()["message"]
        assert 'admission webhook "validate.edgetrust.io" denied the request' in message
        assert "edgetrust denied Pod shop/unsigned: [signed_images]" in message
        assert "no cosign signature" in message

        deployment = create(client, "shop", workload("Deployment", pod(images.unsigned, name="web")))
        assert deployment.status_code == 403
        assert "Deployment shop/web" in deployment.json()["message"]

        warned = create(client, "shop", pod(images.signed, name="unlabeled", labels={}))
        assert warned.status_code == 201
        assert "require_labels" in warned.headers.get("warning", "")

        assert client.get("/api/v1/namespaces/shop/pods/signed").status_code == 200
        assert client.get("/api/v1/namespaces/shop/pods/unsigned").status_code == 404

        webhook_alive.close()  # the webhook is down from here on

        system = create(client, "kube-system", pod(images.unsigned, name="still-admitted"))
        assert system.status_code == 201, "kube-system must never depend on the webhook"
        closed = create(client, "shop", pod(images.signed, name="no-webhook"))
        assert closed.status_code == 500, closed.text  # failurePolicy Fail: no answer means no admission
        assert "failed calling webhook" in closed.json()["message"]
