"""The real cluster's own two images (localpeers/nodeimages.py: pause, and the tools image of the workload
probes), written by localpeers/oci_image.py: containerd imports each under its name with the digest of its
layout, which is what `RealCluster` relies on (the sandbox image is named in containerd's config). A private
containerd, not the real cluster's."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from localpeers.nodeimages import PAUSE_IMAGE, TOOLS_IMAGE, pause_image, tools_image
from localpeers.oci_image import read_oci_layout
from tests.integration.images.containerd import listed_digest, private_containerd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _layout_digest(archive: Path, into: Path) -> str:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    digest, _ = read_oci_layout(into)
    return digest


def test_the_node_images_import_with_their_names_and_digests(tmp_path: Path) -> None:
    images = {"pause": pause_image(), "tools": tools_image()}
    assert (images["pause"].name, images["tools"].name) == (PAUSE_IMAGE, TOOLS_IMAGE)
    with private_containerd(tmp_path / "containerd") as ctr:
        for short, image in images.items():
            imported = ctr("images", "import", str(image.archive))
            assert imported.returncode == 0, imported.stderr[-2000:]
            assert listed_digest(ctr, image.name) == _layout_digest(image.archive, tmp_path / short)
