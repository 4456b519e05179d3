"""The chart's admission plane on the real cluster, as tests/integration/chart_real, tests/security and the demo
use it: a release of the webhook, its pods read back from the API server, pods submitted through the API server
(which calls the webhook through the Service the ValidatingWebhookConfiguration names), and the signed-image
setup: a TLS registry on the node's address, images pushed with oras and signed with cosign, a policy bundle
with an image-signature policy for them.

No image is pulled: every image is already in the node's containerd (imported by localpeers.chartrelease, or
tagged there with the registry's name by `tag_on_node`), so the kubelet finds it by the name and digest the pod
gives; the webhook alone speaks to the registry (its CA given by the chart's webhook.registryCA).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.policyfile import SiteParameters
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers import chartrelease
from localpeers.chartrelease import ClusterImages
from localpeers.peers import peer
from localpeers.realcluster import RealCluster
from localpeers.registry import Registry, running_registry
from localpeers.tlsca import TestCA

REPO = Path(__file__).resolve().parents[1]
NODE_ADDRESS = "198.18.255.1"
#: below the ephemeral range: a free port on loopback may be a client's source port on the node's address
REGISTRY_PORT = 5143
WEBHOOK = "webhook"
SIGNED_POLICY = "signed_images"


class AdmissionReleaseError(RuntimeError):
    """A step of the admission plane's set-up failed; the message holds what kubectl, oras or cosign said."""


@dataclass(frozen=True)
class Release:
    cluster: RealCluster
    name: str
    namespace: str
    install_to_ready_s: float

    @property
    def service(self) -> str:
        return webhook_service(self.name)

    def webhook_pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={WEBHOOK}"
        found = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json")
        pods: list[dict[str, Any]] = json.loads(found.stdout)["items"]
        return pods

    def logs(self) -> str:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={WEBHOOK}"
        return self.cluster.kubectl(
            "logs", "-n", self.namespace, "-l", selector, "-c", WEBHOOK, "--tail=200", check=False
        ).stdout


def webhook_service(release: str) -> str:
    """The chart's name for the webhook's Service (edgetrust.fullname + -webhook)."""
    full = release if "edgetrust" in release else f"{release}-edgetrust"
    return f"{full[:50].rstrip('-')}-webhook"


@contextmanager
def installed(
    cluster: RealCluster, images: ClusterImages, release: str, namespace: str, values: dict[str, Any], *, work: Path
) -> Iterator[Release]:
    """`helm upgrade --install --wait` with the images' values under `values`; uninstalled (and its namespace
    gone) on the way out, also when a test fails."""
    try:
        seconds = chartrelease.install(
            cluster, release, namespace, chartrelease.merge_values(images.helm_values(), values), work=work
        )
        yield Release(cluster, release, namespace, seconds)
    finally:
        chartrelease.uninstall(cluster, release, namespace)


def submit(cluster: RealCluster, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`kubectl create` through the API server (and so through every admission webhook): never raises."""
    return cluster.kubectl("create", "-f", "-", stdin=json.dumps(manifest), check=False)


def workload_pod(name: str, namespace: str, image: str, *, pull: str = "Never", **container: Any) -> dict[str, Any]:
    """A pod the default library admits (a tagged or pinned image, no privilege) unless `container` says more."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": pull,
                    "resources": {"limits": {"memory": "32Mi"}},
                    **container,
                }
            ],
        },
    }


def deployment(name: str, namespace: str, image: str, replicas: int = 2) -> dict[str, Any]:
    pod = workload_pod(name, namespace, image, pull="IfNotPresent")
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod["spec"]},
        },
    }


def wait_running(cluster: RealCluster, namespace: str, name: str, timeout_s: float = 90) -> dict[str, Any]:
    """The pod once Running (its events in the error otherwise)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, Any] = json.loads(cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
        if found.get("status", {}).get("phase") == "Running":
            return found
        if time.monotonic() > deadline:
            events = cluster.kubectl("get", "events", "-n", namespace, check=False).stdout
            raise AdmissionReleaseError(f"pod {namespace}/{name} not Running: {found.get('status')}\n{events}")
        time.sleep(0.3)


def fresh_namespace(cluster: RealCluster, name: str) -> str:
    cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", check=False, timeout_s=120)
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AdmissionReleaseError(f"no default service account in {name}")
        time.sleep(0.3)
    return name


def drop_namespace(cluster: RealCluster, name: str) -> None:
    cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", check=False, timeout_s=120)


# --- signed images -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedImages:
    """A registry on the node's address holding a signed and an unsigned image, and what the webhook needs."""

    registry: Registry
    cosign_public: Path
    cosign_key: Path
    repository: str  # host/edgetrust/pause: signed at `signed`
    signed: str  # digest
    unsigned_repository: str
    unsigned: str  # digest, never signed

    def pinned(self, digest: str | None = None) -> str:
        return f"{self.repository}@{digest or self.signed}"


@contextmanager
def signed_images(cluster: RealCluster, images: ClusterImages, work: Path) -> Iterator[SignedImages]:
    """The pause image (its OCI layout, so the pushed digest is the one imported on the node) pushed with oras to
    a TLS registry on 198.18.255.1 and signed by digest with the pinned cosign (a throwaway key, no Rekor); a small
    unsigned image beside it; the signed one tagged in the node's containerd with the registry's name."""
    ca = TestCA(work / "registry-ca")
    with running_registry(work / "registry", ca, port=REGISTRY_PORT, address=NODE_ADDRESS) as registry:
        layout, tag = _oci_layout(images, "pause")
        repository = f"{registry.host}/edgetrust/pause"
        registry.run(
            peer("oras"), "cp", "--to-ca-file", str(registry.ca_file), "--from-oci-layout", f"{layout}:{tag}",
            f"{repository}:{tag}", cwd=work,
        )  # fmt: skip
        digest = registry.run(
            peer("oras"), "resolve", "--ca-file", str(registry.ca_file), f"{repository}:{tag}", cwd=work
        ).strip()
        if digest != images.digests["pause"]:
            raise AdmissionReleaseError(f"pushed {digest}, built {images.digests['pause']}: the node would run another")
        key, public = registry.cosign_keypair("publisher")
        registry.cosign_sign(f"{repository}@{digest}", key)
        unsigned = registry.push_image("edgetrust/unsigned", "1.0", content=b"never signed\n")
        tag_on_node(cluster, images.references["pause"], f"{repository}:{tag}", f"{repository}@{digest}")
        yield SignedImages(registry, public, key, repository, digest, f"{registry.host}/edgetrust/unsigned", unsigned)


def tag_on_node(cluster: RealCluster, source: str, *names: str) -> None:
    """Give an image already in the node's containerd more names, so the kubelet finds it without a pull."""
    ctr = ["ctr", f"--address={cluster.containerd_socket}", "-n", "k8s.io", "images", "tag", "--force"]
    for name in names:
        done = subprocess.run([*ctr, source, name], capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise AdmissionReleaseError(f"ctr images tag {source} {name}: {done.stderr.strip()}")


def _oci_layout(images: ClusterImages, short: str) -> tuple[Path, str]:
    report = json.loads(images.manifest.read_text())
    built = report["images"][short]
    return Path(built["oci_layout"]), str(built["name"]).rpartition(":")[2]


def signed_bundle_values(signed: SignedImages, work: Path, *, group: str = "stores") -> dict[str, Any]:
    """Chart values: a bundle of the repository's library plus an image-signature policy for the registry's
    `edgetrust/*` images (the cosign key), signed with a fresh publisher key; its key; the registry's CA."""
    policies = work / "policies"
    shutil.rmtree(policies, ignore_errors=True)
    shutil.copytree(REPO / "policies" / "admission", policies / "admission")
    folder = policies / "admission" / SIGNED_POLICY
    folder.mkdir()
    shutil.copy(signed.cosign_public, folder / "cosign.pub")
    meta = {
        "name": SIGNED_POLICY,
        "type": "image-signature",
        "mode": "enforce",
        "failure": "closed",
        "images": [f"{signed.registry.host}/edgetrust/*"],
        "keys": ["cosign.pub"],
    }
    (folder / "policy.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    site = SiteParameters({"allowed_repos": {"repos": [f"{signed.registry.host}/", "edgetrust.local/"]}}, "test site")
    publisher = ec.generate_private_key(ec.SECP256R1())
    files = sign_files(
        build_files(read_repository(policies, parameters=site), counter=1, commit="chart-real", group=group),
        SigningKey("ci-1", publisher),
    )
    public = publisher.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "webhook": {
            "policyBundleBase64": base64.b64encode(pack(files)).decode(),
            "bundleKeys": {"ci-1": public.decode()},
            "registryCA": signed.registry.ca_file.read_text(),
        }
    }
