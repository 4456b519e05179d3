"""A real kube-apiserver calling the served webhook (TLS) for pods and pods/binding, the webhook following the
node attestation ConfigMap with `--node-attestation`: what the binding tests (integration and security) share.

The webhook runs with no admission policies (unsafe_allow_empty_policy_set): here only the binding gate
decides, so a refusal can only be the gate's. The "hub" key is either a real trustd's revocation key (the
integration test) or one made here, with which tests sign documents as the hub would (nodestatus.build).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust._internal import kube as kubeapi
from edgetrust.bundles import nodestatus
from edgetrust.bundles.format import MANIFEST, pack
from edgetrust.bundles.revocations import KEY_ID, ROOTS
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.kube import KubeAPI, running_kube_apiserver, validating_webhook
from localpeers.opa_server import opa_server
from localpeers.tlsca import TestCA
from localpeers.webhook import RunningWebhook, running_webhook

NAMESPACE = "edgetrust-system"
APPS = "shop"
CLUSTER = "edge-1"
SITE = "lab"
IMAGE = "registry.invalid/app@sha256:" + "a" * 64
BINDING_RULES: list[dict[str, object]] = [
    {
        "operations": ["CREATE"],
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["pods", "pods/binding"],
        "scope": "Namespaced",
    }
]


def signing_key(private: ec.EllipticCurvePrivateKey) -> SigningKey:
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningKey.from_pem(KEY_ID, pem)


def document(
    key: SigningKey,
    sequence: int,
    nodes: Mapping[str, tuple[float, bool]],
    *,
    cluster: str = CLUSTER,
    max_age_s: int = 3600,
) -> bytes:
    """A node attestation document as the hub signs it: {node: (last_attested, revoked)}."""
    return nodestatus.build(
        cluster=cluster,
        site=SITE,
        sequence=sequence,
        issued_at=time.time(),
        max_age_s=max_age_s,
        nodes={
            name: nodestatus.NodeRecord(f"spiffe://edge.example/site/{SITE}/node/{name}", at, revoked)
            for name, (at, revoked) in nodes.items()
        },
        key=key,
    )


def revocation_list(key: SigningKey, counter: int, spiffe_ids: list[str]) -> bytes:
    """A revocation list as trustd/server/revocations.py signs it."""
    manifest = {"revision": f"{counter:012d}-revocations", "roots": ROOTS, "metadata": {"counter": counter}}
    data = {"spiffe_ids": sorted(spiffe_ids), "nodes": []}
    files = {
        MANIFEST: json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
        f"{ROOTS[0]}/data.json": json.dumps(data, sort_keys=True, separators=(",", ":")).encode(),
    }
    return pack(sign_files(files, key))


def spiffe_of(node: str) -> str:
    return f"spiffe://edge.example/site/{SITE}/node/{node}"


@dataclass
class BindingRig:
    kube: KubeAPI
    webhook: RunningWebhook

    def put(self, nodes_blob: bytes, revocations_blob: bytes | None = None, *, sequence: int = 0) -> None:
        """The ConfigMap as the syncer writes it (server-side apply, forced)."""
        self.put_object(
            nodestatus.configmap(nodes_blob, revocations_blob, namespace=NAMESPACE, sequence=sequence, labels={})
        )

    def put_object(self, obj: Mapping[str, Any]) -> None:
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{nodestatus.CONFIGMAP}"
        with self.kube.client() as client:
            answer = client.patch(
                path,
                params={"fieldManager": "test", "force": "true"},
                json=dict(obj),
                headers={"Content-Type": kubeapi.APPLY_PATCH},
            )
        assert answer.status_code in (200, 201), answer.text

    def readyz(self) -> dict[str, Any]:
        with self.webhook.client() as client:
            found: dict[str, Any] = client.get("/readyz").json()
        return found

    def wait_held(self, *, sequence: int | None = None, failure: str | None = None) -> dict[str, Any]:
        """Until the webhook holds document `sequence`, or reports a failure containing `failure`."""
        deadline = time.monotonic() + 30  # a bound on the wait, not a timed assertion
        while True:
            held: dict[str, Any] = self.readyz().get("node_attestation", {})
            if sequence is not None and held.get("sequence") == sequence:
                return held
            if failure is not None and failure in held.get("last_failure", ""):
                return held
            assert time.monotonic() < deadline, held
            time.sleep(0.1)

    def pending_pod(self, name: str, *, namespace: str = APPS) -> None:
        """A pod left to the scheduler (there is none in this rig): it stays unbound until a test binds it."""
        with self.kube.client() as client:
            answer = client.post(f"/api/v1/namespaces/{namespace}/pods", json=pod_object(name))
        assert answer.status_code == 201, answer.text

    def bind(self, pod: str, node: str, *, namespace: str = APPS) -> httpx.Response:
        """What the scheduler does: POST pods/<pod>/binding naming the node."""
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        with self.kube.client() as client:
            return client.post(f"/api/v1/namespaces/{namespace}/pods/{pod}/binding", json=binding)

    def create_on_node(self, pod: str, node: str, *, namespace: str = APPS) -> httpx.Response:
        """A pod that names its node itself (spec.nodeName), bypassing the scheduler."""
        obj = pod_object(pod)
        obj["spec"]["nodeName"] = node
        with self.kube.client() as client:
            return client.post(f"/api/v1/namespaces/{namespace}/pods", json=obj)

    def node_of(self, pod: str, *, namespace: str = APPS) -> str:
        with self.kube.client() as client:
            found = client.get(f"/api/v1/namespaces/{namespace}/pods/{pod}").json()
        return str(found["spec"].get("nodeName", ""))


def pod_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": IMAGE}]},
    }


def public_pem(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@contextmanager
def binding_rig(workdir: Path, hub_public_pem: bytes, *, cluster: str = CLUSTER) -> Iterator[BindingRig]:
    """kube-apiserver + OPA + the served webhook (node attestation on, trusting `hub_public_pem` for `cluster`),
    registered for pods and pods/binding CREATE, with its own namespace and kube-system excluded."""
    key_file = workdir / "hub-revocations.pem"
    workdir.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(hub_public_pem)
    policies = workdir / "no-policies"
    policies.mkdir(exist_ok=True)
    with (
        running_kube_apiserver(workdir / "kube", TestCA(workdir / "kube-ca")) as kube,
        opa_server(workdir / "opa") as opa,
    ):
        with kube.client() as client:
            for namespace in (NAMESPACE, APPS):
                made = client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
                assert made.status_code == 201, made.text
        token = workdir / "token"
        token.write_text(kube.token)
        webhook_ca = TestCA(workdir / "webhook-ca")
        with running_webhook(
            workdir / "webhook",
            webhook_ca,
            policy_dir=policies,
            unsafe_allow_empty_policy_set=True,
            exempt_namespaces=("kube-system", NAMESPACE),
            opa_port=opa.port,
            node_attestation=True,
            node_attestation_key=key_file,
            node_attestation_interval_s=0.2,
            cluster=cluster,
            follow_namespace=NAMESPACE,
            kube_url=kube.url,
            kube_token_file=token,
            kube_ca_file=kube.ca_file,
        ) as webhook:
            configuration = validating_webhook(
                webhook.url, webhook_ca.ca_file, rules=BINDING_RULES, excluded_namespaces=("kube-system", NAMESPACE)
            )
            with kube.client() as client:
                made = client.post(
                    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", json=configuration
                )
                assert made.status_code == 201, made.text
                # the API server picks up webhook configurations asynchronously: wait until it calls ours (a pod
                # naming a node while no document is held is refused by the gate, and only by it)
                deadline = time.monotonic() + 20
                probe = pod_object("probe")
                probe["spec"]["nodeName"] = "probe-node"
                while client.post(f"/api/v1/namespaces/{APPS}/pods", json=probe, params={"dryRun": "All"}).is_success:
                    assert time.monotonic() < deadline, "the API server never called the webhook"
                    time.sleep(0.2)
            yield BindingRig(kube, webhook)
