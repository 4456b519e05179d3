"""Write container images from a root filesystem folder: deterministic layers, OCI image layouts, docker-archives.

No registry is reachable from this machine, so every image the real cluster runs is written here from a folder
(`hack/build-images` makes the folders). What makes two builds of one input give one digest:

- tar entries sorted by path, numeric owners kept, no user or group names, every mtime SOURCE_DATE_EPOCH (clamping
  is not enough: a root cached before the commit holds older build-time mtimes than one made after it; byte code
  that would compare mtimes must therefore be hash-based, which hack/build-images makes it);
- gzip with a zero header mtime and no file name, at one fixed level;
- JSON written with sorted keys and no whitespace, `created` taken from SOURCE_DATE_EPOCH.

Device files, sockets and the contents of /dev, /proc, /sys, /run and /tmp are left out: the runtime mounts those.
Dev-only (images are built from a checkout), hence under localpeers/, never imported by shipped code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# kept as empty directories: the runtime mounts over them
MOUNT_POINTS = ("dev", "proc", "sys", "run", "tmp")
GZIP_LEVEL = 6


class ImageError(RuntimeError):
    """An image could not be written from its root filesystem (a file type no layer may hold, a bad path)."""


def canonical_json(value: Any) -> bytes:
    """One byte string per value, so a config or manifest's digest depends on its content only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    """Every path under `root` in sorted order (parents before children), without the mount points' contents."""
    stack = [root]
    while stack:
        directory = stack.pop()
        children = sorted(directory.iterdir(), key=lambda p: p.name, reverse=True)
        for child in children:
            relative = child.relative_to(root)
            if len(relative.parts) > 1 and relative.parts[0] in MOUNT_POINTS:
                continue
            yield child
            if child.is_dir() and not child.is_symlink():
                stack.append(child)


def _sorted_paths(root: Path) -> list[Path]:
    return sorted(_walk(root), key=lambda p: p.relative_to(root).as_posix())


def layer_tar(root: Path, epoch: int) -> bytes:
    """The uncompressed layer of `root`: sorted, numeric owners, every mtime `epoch`, hard links kept."""
    buffer = io.BytesIO()
    seen: dict[tuple[int, int], str] = {}  # (device, inode) -> first name, for hard links
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _sorted_paths(root):
            name = path.relative_to(root).as_posix()
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = epoch
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen[key]
                    tar.addfile(info)
                    continue
                seen[key] = name
                info.size = st.st_size
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                raise ImageError(f"{name}: a {stat.filemode(st.st_mode)[0]!r} file has no place in an image layer")
    return buffer.getvalue()


def files_tar(files: Mapping[str, tuple[bytes, int]], links: Mapping[str, str], epoch: int = 0) -> bytes:
    """The uncompressed layer of a few files given in memory (path -> (content, mode)) and symlinks (path ->
    target), owned by root, with their parent folders: for images too small to stage in a folder."""
    buffer = io.BytesIO()
    folders = sorted({parent.as_posix() for path in (*files, *links) for parent in Path(path).parents} - {"."})
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(content), mode, epoch
            tar.addfile(info, io.BytesIO(content))
        for path, target in sorted(links.items()):
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, epoch
            tar.addfile(info)
    return buffer.getvalue()


def gzip_layer(tar: bytes) -> bytes:
    """gzip with no name and a zero mtime in its header: the same tar always compresses to the same bytes."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0) as handle:
        handle.write(tar)
    return out.getvalue()


@dataclass(frozen=True)
class Layer:
    tar: bytes  # uncompressed (the docker-archive and the diff ID)
    blob: bytes  # gzip (the OCI layout and the registry)

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)

    @property
    def digest(self) -> str:
        return sha256_digest(self.blob)

    @classmethod
    def from_root(cls, root: Path, epoch: int) -> Layer:
        return cls.from_tar(layer_tar(root, epoch))

    @classmethod
    def from_tar(cls, tar: bytes) -> Layer:
        return cls(tar=tar, blob=gzip_layer(tar))


@dataclass
class ImageSpec:
    """What goes in an image's config besides its layers (the OCI image config's `config` object)."""

    user: str
    env: Sequence[str] = ()
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    workdir: str = "/"
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltImage:
    """An image in memory: its config, manifest and layers, each with its digest."""

    name: str  # e.g. edgetrust/edgetrust:0.1.0 (the docker-archive's RepoTags, the layout's ref name)
    config: bytes
    manifest: bytes
    layers: tuple[Layer, ...]

    @property
    def digest(self) -> str:
        """The manifest digest: what a registry answers and what cosign signs."""
        return sha256_digest(self.manifest)

    @property
    def size(self) -> int:
        """Bytes a pull transfers (config and compressed layers)."""
        return len(self.config) + sum(len(layer.blob) for layer in self.layers)

    @property
    def unpacked_size(self) -> int:
        return sum(len(layer.tar) for layer in self.layers)


def build_image(name: str, layers: Sequence[Layer], spec: ImageSpec, epoch: int) -> BuiltImage:
    created = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config_object: dict[str, Any] = {"User": spec.user, "Env": list(spec.env), "WorkingDir": spec.workdir}
    if spec.entrypoint:
        config_object["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        config_object["Cmd"] = list(spec.cmd)
    if spec.labels:
        config_object["Labels"] = dict(spec.labels)
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": config_object,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": created, "created_by": "hack/build-images"} for _ in layers],
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": len(layer.blob)} for layer in layers
            ],
            "annotations": {"org.opencontainers.image.created": created},
        }
    )
    return BuiltImage(name=name, config=config, manifest=manifest, layers=tuple(layers))


def _write_blob(blobs: Path, data: bytes) -> None:
    path = blobs / sha256_digest(data).removeprefix("sha256:")
    if not path.exists():
        path.write_bytes(data)


def write_oci_layout(image: BuiltImage, directory: Path) -> Path:
    """An OCI image layout (oras `--oci-layout`, `ctr import` after tar), its one tag the image name's tag."""
    if directory.exists():
        shutil.rmtree(directory)
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for data in (image.config, image.manifest, *(layer.blob for layer in image.layers)):
        _write_blob(blobs, data)
    (directory / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    tag = image.name.rpartition(":")[2]
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.digest,
                "size": len(image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": image.name},
            }
        ],
    }
    (directory / "index.json").write_bytes(canonical_json(index))
    return directory


def _tar_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(image: BuiltImage, path: Path) -> Path:
    """A docker-archive (`docker save` format): what `ctr -n k8s.io images import` reads, verified on this machine.
    Its layers are the uncompressed tars, so containerd records the same diff IDs as the OCI image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config_name = sha256_digest(image.config).removeprefix("sha256:") + ".json"
    layer_names = [f"{layer.diff_id.removeprefix('sha256:')}/layer.tar" for layer in image.layers]
    manifest = [{"Config": config_name, "RepoTags": [image.name], "Layers": layer_names}]
    with path.open("wb") as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_bytes(tar, config_name, image.config)
        for name, layer in zip(layer_names, image.layers, strict=True):
            _tar_bytes(tar, name, layer.tar)
        _tar_bytes(tar, "manifest.json", canonical_json(manifest))
    return path


def write_oci_archive(layout: Path, path: Path) -> Path:
    """The OCI layout as one tar (sorted, fixed mtimes): `ctr images import` reads it too, naming the image from
    the `io.containerd.image.name` annotation."""
    with path.open("wb") as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in _sorted_paths(layout):
            if entry.is_file():
                _tar_bytes(tar, entry.relative_to(layout).as_posix(), entry.read_bytes())
    return path


def read_oci_layout(directory: Path) -> tuple[str, dict[str, Any]]:
    """(manifest digest, image config) of the one image in an OCI layout, for tests and the report."""
    index = json.loads((directory / "index.json").read_bytes())
    digest = str(index["manifests"][0]["digest"])
    blobs = directory / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.removeprefix("sha256:")).read_bytes())
    config = json.loads((blobs / str(manifest["config"]["digest"]).removeprefix("sha256:")).read_bytes())
    return digest, config


def unpack_layers(directory: Path, destination: Path) -> None:
    """Unpack the image in an OCI layout into `destination` (as root: owners kept), to run its programs."""
    index = json.loads((directory / "index.json").read_bytes())
    blobs = directory / "blobs" / "sha256"
    manifest = json.loads((blobs / str(index["manifests"][0]["digest"]).removeprefix("sha256:")).read_bytes())
    destination.mkdir(parents=True, exist_ok=True)
    for layer in manifest["layers"]:
        with tarfile.open(blobs / str(layer["digest"]).removeprefix("sha256:"), mode="r:gz") as tar:
            tar.extractall(destination, filter="tar")
