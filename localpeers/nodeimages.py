"""Container images for the real cluster without a registry: a root filesystem packed as a docker-archive tarball.

No image registry on the internet is reachable from this machine, so the cluster's two images are built here
from local files and imported with `ctr -n k8s.io images import`; pods use `imagePullPolicy: Never`. The pause
image is a few lines of Go (hack/images/pause.go, the source `make images` builds too) built static; the test
image is Debian's busybox-static (`nc` serves and probes; its `wget` segfaults on this machine). A tarball is
rebuilt only when its inputs change (the name carries their hash), so a warm start reuses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from localpeers.peers import peers_cache

PAUSE_IMAGE = "edgetrust.local/pause:1"
TOOLS_IMAGE = "edgetrust.local/tools:1"
_PAUSE_SOURCE = Path(__file__).resolve().parents[1] / "hack" / "images" / "pause.go"
_BUSYBOX = Path("/bin/busybox")
#: the applets the tests use, as links to /bin/busybox in the image
_APPLETS = ("sh", "nc", "sleep", "echo", "cat", "hostname", "ip", "ls", "true", "false", "timeout", "ps", "date")


@dataclass(frozen=True)
class Image:
    name: str
    archive: Path


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says which tool to install."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _layer(files: dict[str, tuple[bytes, int]], links: dict[str, str]) -> bytes:
    """One layer tar: `files` path -> (content, mode), `links` path -> symlink target; fixed owners and times so
    the same inputs give the same digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        folders = sorted({str(Path(p).parent) for p in (*files, *links)} - {"."})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            layer.addfile(info)
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), mode
            layer.addfile(info, io.BytesIO(content))
        for path, target in sorted(links.items()):
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            layer.addfile(info)
    return buffer.getvalue()


def docker_archive(name: str, layer: bytes, entrypoint: list[str], out: Path) -> Path:
    """A docker-archive (manifest.json, config JSON, one layer) that `ctr images import` accepts."""
    layer_id = _digest(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
            "history": [{"created_by": "localpeers/nodeimages.py"}],
        },
        sort_keys=True,
    ).encode()
    config_name = f"{_digest(config)}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    partial = out.with_suffix(".partial")
    with tarfile.open(partial, "w") as archive:
        for path, content in ((config_name, config), (f"{layer_id}/layer.tar", layer), ("manifest.json", manifest)):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o644
            archive.addfile(info, io.BytesIO(content))
    os.replace(partial, out)
    return out


def _cache() -> Path:
    folder = peers_cache() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pause_image() -> Image:
    """The sandbox image: hack/images/pause.go, built static with the Go toolchain (cached by source hash)."""
    source = _PAUSE_SOURCE.read_bytes()
    out = _cache() / f"pause-{_digest(source)[:16]}.tar"
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
        layer = _layer({"pause": (binary.read_bytes(), 0o755)}, {})
        binary.unlink()
        docker_archive(PAUSE_IMAGE, layer, ["/pause"], out)
    return Image(PAUSE_IMAGE, out)


def tools_image() -> Image:
    """The test pods' image: Debian's static busybox with the applets the tests use (cached by its hash)."""
    if not _BUSYBOX.exists():
        raise ImageBuildError(f"{_BUSYBOX} is missing: run apt-get install -y busybox-static (hack/install-deps)")
    busybox = _BUSYBOX.read_bytes()
    out = _cache() / f"tools-{_digest(busybox + ','.join(_APPLETS).encode())[:16]}.tar"
    if not out.exists():
        links = {f"bin/{applet}": "busybox" for applet in _APPLETS}
        layer = _layer({"bin/busybox": (busybox, 0o755), "etc/passwd": (b"root:x:0:0:root:/:/bin/sh\n", 0o644)}, links)
        docker_archive(TOOLS_IMAGE, layer, ["/bin/sh"], out)
    return Image(TOOLS_IMAGE, out)
