"""Signed images on the real node: a release whose policy bundle adds an image-signature policy (a cosign key)
for the images of a TLS registry on the node's address, whose CA the chart gives the webhook (webhook.registryCA).

The pause image is pushed there with oras (its OCI layout: the pushed digest is the one imported on the node) and
signed by digest with the pinned cosign; a small image beside it is never signed. The signed image is tagged in
the node's containerd with the registry's name, so the kubelet runs it without a pull (containerd is not given
the registry's CA: only the webhook speaks to the registry). Pods name images by digest, through the API server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localpeers.admissionrelease import (
    SIGNED_POLICY,
    Release,
    SignedImages,
    deployment,
    drop_namespace,
    fresh_namespace,
    installed,
    signed_bundle_values,
    signed_images,
    submit,
    wait_running,
    workload_pod,
)
from localpeers.chartrelease import ClusterImages
from localpeers.realcluster import RealCluster

pytestmark = pytest.mark.integration

RELEASE, NAMESPACE = "edgetrust-signed", "edgetrust-signed"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("signed")


@pytest.fixture(scope="module")
def signed(real_cluster: RealCluster, cluster_images: ClusterImages, work: Path) -> Iterator[SignedImages]:
    with signed_images(real_cluster, cluster_images, work) as images:
        yield images


@pytest.fixture(scope="module")
def release(
    real_cluster: RealCluster, cluster_images: ClusterImages, signed: SignedImages, work: Path
) -> Iterator[Release]:
    values = signed_bundle_values(signed, work)
    with installed(real_cluster, cluster_images, RELEASE, NAMESPACE, values, work=work / "release") as done:
        print(f"\ninstall_to_ready_s (webhook, signed bundle): {done.install_to_ready_s:.1f}", flush=True)
        yield done


@pytest.fixture
def namespace(real_cluster: RealCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = fresh_namespace(real_cluster, f"sig-{request.node.name[5:30].replace('_', '-').strip('-')}")
    yield name
    drop_namespace(real_cluster, name)


def test_the_release_runs_the_bundle_with_the_registry_ca(release: Release) -> None:
    for pod in release.webhook_pods():
        args = pod["spec"]["containers"][0]["args"]
        assert "--bundle=/etc/edgetrust/bundle/bundle.tar.gz" in args
        assert "--registry-ca-file=/etc/edgetrust/registry-ca/ca.pem" in args
        assert "--default-library" not in args


def test_a_pod_of_the_signed_image_reaches_running(release: Release, signed: SignedImages, namespace: str) -> None:
    admitted = submit(release.cluster, workload_pod("signed", namespace, signed.pinned(), pull="IfNotPresent"))
    assert admitted.returncode == 0, admitted.stderr
    running = wait_running(release.cluster, namespace, "signed")
    status = running["status"]["containerStatuses"][0]
    assert status["imageID"].endswith(signed.signed), status  # the node runs the digest that was verified


def test_a_pod_of_the_unsigned_image_is_refused_with_the_policy_s_reason(
    release: Release, signed: SignedImages, namespace: str
) -> None:
    image = f"{signed.unsigned_repository}@{signed.unsigned}"
    refused = submit(release.cluster, workload_pod("unsigned", namespace, image, pull="IfNotPresent"))
    assert refused.returncode != 0
    assert f"edgetrust denied Pod {namespace}/unsigned: [{SIGNED_POLICY}]" in refused.stderr, refused.stderr
    assert "has no cosign signature" in refused.stderr, refused.stderr
    gone = release.cluster.kubectl("get", "pod", "unsigned", "-n", namespace, check=False)
    assert "NotFound" in gone.stderr


def test_a_deployment_of_the_signed_image_rolls_out(release: Release, signed: SignedImages, namespace: str) -> None:
    cluster = release.cluster
    created = submit(cluster, deployment("signed-app", namespace, signed.pinned()))
    assert created.returncode == 0, created.stderr
    rolled = cluster.kubectl(
        "rollout", "status", "deployment/signed-app", "-n", namespace, "--timeout=120s", check=False, timeout_s=150
    )
    events = cluster.kubectl("get", "events", "-n", namespace, check=False).stdout
    assert rolled.returncode == 0, f"{rolled.stdout}\n{rolled.stderr}\n{events}"
    assert "successfully rolled out" in rolled.stdout


def test_a_deployment_of_the_unsigned_image_is_refused_before_any_replica_set(
    release: Release, signed: SignedImages, namespace: str
) -> None:
    image = f"{signed.unsigned_repository}@{signed.unsigned}"
    refused = submit(release.cluster, deployment("unsigned-app", namespace, image))
    assert refused.returncode != 0
    assert f"[{SIGNED_POLICY}]" in refused.stderr, refused.stderr
    sets = release.cluster.kubectl("get", "replicasets", "-n", namespace, "-o", "name").stdout
    assert sets.strip() == ""
