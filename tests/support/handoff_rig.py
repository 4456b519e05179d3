"""A webhook controller following the handoff ConfigMap of a real kube-apiserver, with a real OPA: what the
syncer -> webhook tests (integration and security) share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from admission.controller import AdmissionController
from admission.follow import BundleFollower
from admission.images.verifier import CacheSettings, ImageVerifier
from admission.metrics import AdmissionMetrics
from admission.registry import RegistryClient
from admission.rego.opa import OpaDecider, OpaSettings
from edgetrust._internal import kube as kubeapi
from edgetrust.bundles import handoff
from localpeers.kube import KubeAPI, running_kube_apiserver
from localpeers.opa_server import OpaServer, opa_server
from localpeers.tlsca import TestCA
from tests.support.policy_generations import generation_bundle, generation_set

NAMESPACE = "edgetrust-system"
GROUP = "gateways"
KEY_ID = "ci-1"


@contextmanager
def handoff_kube(workdir: Path) -> Iterator[KubeAPI]:
    """etcd + kube-apiserver on loopback with the namespace the syncer and the webhook share."""
    with running_kube_apiserver(workdir / "kube", TestCA(workdir / "ca")) as api:
        with api.client() as client:
            made = client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}})
            assert made.status_code == 201, made.text
        yield api


@dataclass
class HandoffRig:
    kube: KubeAPI
    opa: OpaServer
    root: Path
    key: ec.EllipticCurvePrivateKey

    def bundle(
        self, k: int, *, group: str = GROUP, key: ec.EllipticCurvePrivateKey | None = None, broken: bool = False
    ) -> bytes:
        return generation_bundle(self.root, k, key or self.key, key_id=KEY_ID, group=group, broken=broken)

    def put(self, blob: bytes) -> None:
        """The handoff ConfigMap holding `blob`, as the syncer writes it (server-side apply)."""
        self.put_object(handoff.configmap(blob, namespace=NAMESPACE, revision="test", labels={}))

    def put_object(self, obj: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{handoff.CONFIGMAP}"
        with self.kube.client() as client:
            answer = client.patch(
                path,
                params={"fieldManager": "test", "force": "true"},
                json=obj,
                headers={"Content-Type": kubeapi.APPLY_PATCH},
            )
        assert answer.status_code in (200, 201), answer.text

    def follower(self, controller: AdmissionController, *, kube_url: str | None = None) -> BundleFollower:
        """A follower of this API server (or of `kube_url`: one out of reach) trusting the rig's key."""
        source = kubeapi.Direct(kube_url or self.kube.url, self.kube.token, self.kube.ca_file)
        return BundleFollower(
            controller,
            kubeapi.KubeConnection(source, timeout_s=5),
            namespace=NAMESPACE,
            keys={KEY_ID: self.key.public_key()},
            group=GROUP,
            exempt_namespaces=(),
        )

    def run(
        self,
        scenario: Callable[[AdmissionController, BundleFollower], Awaitable[None]],
        *,
        kube_url: str | None = None,
    ) -> None:
        """`scenario` against a started controller enforcing generation 0 and its follower (both closed after)."""

        async def main() -> None:
            metrics = AdmissionMetrics()
            controller = AdmissionController(
                generation_set(self.root, 0),
                OpaDecider(OpaSettings(port=self.opa.port)),
                ImageVerifier(RegistryClient(), metrics, CacheSettings()),
                metrics,
            )
            follower = self.follower(controller, kube_url=kube_url)
            await controller.start()
            try:
                await scenario(controller, follower)
            finally:
                await follower.close()
                await controller.close()

        asyncio.run(main())


def remove_handoff(kube: KubeAPI) -> None:
    with kube.client() as client:
        client.delete(f"/api/v1/namespaces/{NAMESPACE}/configmaps/{handoff.CONFIGMAP}")


@contextmanager
def handoff_rig(kube: KubeAPI, workdir: Path) -> Iterator[HandoffRig]:
    """A rig with its own OPA and publisher key; the handoff ConfigMap removed afterwards, also on failure."""
    with opa_server(workdir / "opa") as opa:
        try:
            yield HandoffRig(kube, opa, workdir, ec.generate_private_key(ec.SECP256R1()))
        finally:
            remove_handoff(kube)
