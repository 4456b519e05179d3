"""Container images for the real cluster without a registry: a few files packed as an OCI archive.

No image registry on the internet is reachable from this machine, so the cluster's two images are built here
from local files and imported with `ctr -n k8s.io images import`; pods use `imagePullPolicy: Never`. The pause
image is a few lines of Go (hack/images/pause.go, the source `make images` builds too) built static; the test
image is Debian's busybox-static (`nc` serves and probes; its `wget` segfaults on this machine). Both are written
by localpeers/oci_image.py, as `make images` writes its own: an OCI archive keeps its manifest digest through
`ctr images import` (a docker-archive would be converted to a Docker manifest with another digest). An archive is
rebuilt only when its inputs change (the name carries their hash), so a warm start reuses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localpeers.oci_image import ImageSpec, Layer, build_image, files_tar, write_oci_archive, write_oci_layout
from localpeers.peers import peers_cache

PAUSE_IMAGE = "edgetrust.local/pause:1"
TOOLS_IMAGE = "edgetrust.local/tools:1"
_PAUSE_SOURCE = Path(__file__).resolve().parents[1] / "hack" / "images" / "pause.go"
_BUSYBOX = Path("/bin/busybox")
#: the applets the tests use, as links to /bin/busybox in the image
_APPLETS = ("sh", "nc", "sleep", "echo", "cat", "hostname", "ip", "ls", "true", "false", "timeout", "ps", "date")
#: part of every cache key: a new layout of the archive must not reuse an old file
_FORMAT = "oci-1"


@dataclass(frozen=True)
class Image:
    name: str
    archive: Path


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says which tool to install."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def oci_archive(
    name: str,
    files: Mapping[str, tuple[bytes, int]],
    links: Mapping[str, str],
    entrypoint: Sequence[str],
    out: Path,
) -> Path:
    """An OCI archive of one layer (`files` path -> (content, mode), `links` path -> symlink target, owned by
    root, mtimes 0) that `ctr images import` names `name`; written whole or not at all."""
    layer = Layer.from_tar(files_tar(files, links))
    image = build_image(name, [layer], ImageSpec(user="", env=["PATH=/bin"], entrypoint=entrypoint), 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        partial = Path(scratch) / out.name
        write_oci_archive(write_oci_layout(image, Path(scratch) / "layout"), partial)
        os.replace(partial, out)
    return out


def _cache() -> Path:
    folder = peers_cache() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pause_image() -> Image:
    """The sandbox image: hack/images/pause.go, built static with the Go toolchain (cached by source hash)."""
    source = _PAUSE_SOURCE.read_bytes()
    out = _cache() / f"pause-{_digest(source + _FORMAT.encode())[:16]}.oci.tar"
    if not out.exists():
        go = shutil.which("go")
        if go is None:
            raise ImageBuildError("go is not on PATH; the pause image is built with it (Go 1.26 is expected here)")
        binary = out.with_suffix(".bin")
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "", "GO111MODULE": "off"}
        built = subprocess.run(
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), str(_PAUSE_SOURCE)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise ImageBuildError(f"go build of the pause image failed: {built.stderr.strip()}")
        pause = binary.read_bytes()
        binary.unlink()
        oci_archive(PAUSE_IMAGE, {"pause": (pause, 0o755)}, {}, ["/pause"], out)
    return Image(PAUSE_IMAGE, out)


def tools_image() -> Image:
    """The test pods' image: Debian's static busybox with the applets the tests use (cached by its hash)."""
    if not _BUSYBOX.exists():
        raise ImageBuildError(f"{_BUSYBOX} is missing: run apt-get install -y busybox-static (hack/install-deps)")
    busybox = _BUSYBOX.read_bytes()
    out = _cache() / f"tools-{_digest(busybox + ','.join((_FORMAT, *_APPLETS)).encode())[:16]}.oci.tar"
    if not out.exists():
        links = {f"bin/{applet}": "busybox" for applet in _APPLETS}
        files = {"bin/busybox": (busybox, 0o755), "etc/passwd": (b"root:x:0:0:root:/:/bin/sh\n", 0o644)}
        oci_archive(TOOLS_IMAGE, files, links, ["/bin/sh"], out)
    return Image(TOOLS_IMAGE, out)
