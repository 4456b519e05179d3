"""Attacks on the chart's webhook running on the real node, through the API server: someone with write access
to the registry (but not the signing key) moves a tag a signed release pushed onto an image it never signed.

The release enforces an image-signature policy (localpeers.admissionrelease.signed_bundle_values). The tag is
moved before the webhook ever resolved it: the webhook caches a tag's digest for tag_ttl_s (60 s), so a tag moved
after it was resolved is caught when that entry expires (digest pinning, webhook.digestPinning, makes the kubelet
run the verified digest meanwhile; not tested here).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localpeers.admissionrelease import (
    SIGNED_POLICY,
    Release,
    SignedImages,
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
from localpeers.peers import peer
from localpeers.realcluster import RealCluster

pytestmark = pytest.mark.integration

RELEASE, NAMESPACE, PODS = "edgetrust-tags", "edgetrust-tags", "tag-attacks"


@pytest.fixture(scope="module")
def attack(
    real_cluster: RealCluster, cluster_images: ClusterImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Release, SignedImages, str]]:
    work = tmp_path_factory.mktemp("tags")
    with (
        signed_images(real_cluster, cluster_images, work) as signed,
        installed(
            real_cluster, cluster_images, RELEASE, NAMESPACE, signed_bundle_values(signed, work), work=work / "rel"
        ) as release,
    ):
        namespace = fresh_namespace(real_cluster, PODS)
        try:
            yield release, signed, namespace
        finally:
            drop_namespace(real_cluster, namespace)


def _move_tag(signed: SignedImages, tag: str, source: str, work: Path) -> str:
    """What the attacker does: copy a manifest under the signed repository's tag (oras cp), returning its digest."""
    ca = str(signed.registry.ca_file)
    target = f"{signed.repository}:{tag}"
    signed.registry.run(peer("oras"), "cp", "--from-ca-file", ca, "--to-ca-file", ca, source, target, cwd=work)
    return signed.registry.run(peer("oras"), "resolve", "--ca-file", ca, target, cwd=work).strip()


def test_a_tag_moved_onto_an_unsigned_digest_is_refused(
    attack: tuple[Release, SignedImages, str], tmp_path: Path
) -> None:
    release, signed, namespace = attack
    # the release's tag, as it pushed it: the signed digest
    assert _move_tag(signed, "2.0", signed.pinned(), tmp_path) == signed.signed
    # the attacker's write: the same tag now names an image nobody signed
    moved = _move_tag(signed, "2.0", f"{signed.unsigned_repository}@{signed.unsigned}", tmp_path)
    assert moved == signed.unsigned
    refused = submit(release.cluster, workload_pod("moved", namespace, f"{signed.repository}:2.0", pull="Never"))
    assert refused.returncode != 0
    assert f"[{SIGNED_POLICY}]" in refused.stderr, refused.stderr
    assert signed.unsigned in refused.stderr  # judged by the digest the tag names now, not by the tag's history
    assert "has no cosign signature" in refused.stderr


def test_the_unsigned_digest_under_the_signed_repository_is_refused(
    attack: tuple[Release, SignedImages, str], tmp_path: Path
) -> None:
    """The signature is for a digest, not for a repository: the attacker's manifest copied beside the signed one
    (so the repository's signature tags are there to be confused with) is still unsigned."""
    release, signed, namespace = attack
    _move_tag(signed, "3.0", f"{signed.unsigned_repository}@{signed.unsigned}", tmp_path)
    refused = submit(release.cluster, workload_pod("beside", namespace, signed.pinned(signed.unsigned), pull="Never"))
    assert refused.returncode != 0
    assert f"[{SIGNED_POLICY}]" in refused.stderr, refused.stderr


def test_tag_and_digest_together_are_judged_by_the_digest(attack: tuple[Release, SignedImages, str]) -> None:
    """`repo:2.0@sha256:<signed>`: the kubelet runs the digest, so the tag (moved onto an unsigned image above, or
    not) neither refuses nor admits it; the signed digest runs."""
    release, signed, namespace = attack
    image = f"{signed.repository}:2.0@{signed.signed}"
    admitted = submit(release.cluster, workload_pod("both", namespace, image, pull="IfNotPresent"))
    assert admitted.returncode == 0, admitted.stderr
    running = wait_running(release.cluster, namespace, "both")
    assert running["status"]["containerStatuses"][0]["imageID"].endswith(signed.signed)
