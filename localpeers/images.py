"""Build the images the chart runs, from this checkout and the package registries only (`make images`).

- edgetrust: Debian 12 (mmdebstrap, variant essential: a shell for the node agent's init container, no apt),
  Debian's python3.11 and the runtime libraries tpm2-pytss loads (libtss2), and the wheel of the committed tree
  (`git archive HEAD`) with every deployable's extra. Wheels are built on this machine (tpm2-pytss compiles
  against libtss2-dev here; the image gets the libraries only), pinned to the versions of the venv the tests run
  in, and installed by pip running on the image's own interpreter in a chroot (so its scheme and shebangs are
  Debian's). Byte code is compiled once, hash-based (PEP 552: no mtimes, nothing to rewrite on a read-only root).
  Runs as uid 65532.
- opa: the pinned OPA binary (hack/peers.lock), byte for byte, as /opa, uid 65532.
- pause: hack/images/pause.go, static, as /pause (containerd's sandbox_image), uid 65535.

Each is written as an OCI layout, an OCI archive (`ctr -n k8s.io images import` keeps its digest) and a docker-archive
under the build folder (EDGETRUST_IMAGES, default ~/.cache/edgetrust/images), outside the repository, with an
`images.json` that lists digests, sizes and files. The Debian root and the wheels are cached by their inputs; a
build of one commit is reused while its inputs (package list, the venv's pins) are the same, unless `--rebuild`.
Needs root (mmdebstrap --mode=root, chroot).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localpeers.oci_image import (
    BuiltImage,
    ImageSpec,
    Layer,
    build_image,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
)
from localpeers.peers import peers_cache, pinned

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# on top of variant essential: the interpreter, CA certificates, and what tpm2-pytss dlopens (ESAPI, FAPI and the TCTIs
# a node can name: the kernel's resource manager, swtpm, mssim)
DEBIAN_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-stdlib",
    "ca-certificates",
    "libtss2-esys-3.0.2-0",
    "libtss2-fapi1",  # tpm2-pytss links it (NEEDED), even when only ESAPI is used
    "libtss2-mu0",
    "libtss2-rc0",
    "libtss2-tctildr0",
    "libtss2-tcti-device0",
    "libtss2-tcti-swtpm0",
    "libtss2-tcti-mssim0",
    "libstdc++6",  # grpcio's extension links it (NEEDED): the node agent's Workload API server
)
# pulled in by usrmerge (perl) and tpm-udev (udev rules, for hosts, not containers): purged after mmdebstrap
PURGE = (
    "usrmerge",
    "libfile-find-rule-perl",
    "libnumber-compare-perl",
    "libtext-glob-perl",
    "perl",
    "libperl5.36",
    "perl-modules-5.36",
    "tpm-udev",
    "udev",
)
# dpkg never unpacks these (docs, man pages, translations); copyright files stay
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
EXTRAS = "hub,webhook,syncer,device"
# for the wheels compiled here (tpm2-pytss): no debug info, which held pip's random build folder and made two builds
# of one source differ
NATIVE_CFLAGS = "-g0"
ENTRYPOINTS = ("trustd", "trustctl", "edgetrust-admission", "edgetrust-syncer")
NONROOT = 65532
PAUSE_UID = 65535
SITE = "usr/local/lib/python3.11/dist-packages"
GENERATED = (
    "kubernetes/client/api",
    "kubernetes/client/models",
    "kubernetes/aio/client/api",
    "kubernetes/aio/client/models",
)
PYTHON_ENV = (
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",  # the root is read-only: byte code ships compiled, nothing is written
    "PYTHONUNBUFFERED=1",
    "HOME=/home/nonroot",
    "LANG=C.UTF-8",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
)
# left by dpkg, debconf and mmdebstrap; nothing at run time reads them
REMOVE_AFTER = (
    "var/cache/debconf",
    "var/cache/ldconfig/aux-cache",
    "var/lib/apt",
    "var/cache/apt",
    "var/log",
    "usr/share/doc-base",
    "usr/share/bug",
    "etc/machine-id",
    "var/lib/dbus/machine-id",
)


class BuildError(RuntimeError):
    """A step of the image build failed; the message says which and what to do."""


def build_root() -> Path:
    return Path(os.environ.get("EDGETRUST_IMAGES", Path.home() / ".cache" / "edgetrust" / "images"))


def _run(argv: Sequence[str], *, what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, env=env, check=False, timeout=1800)
    if result.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(argv[:4])} ...):\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return result.stdout


def _need(tool: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BuildError(f"{tool} is not installed: {install}")
    return path


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _partial(done: Path) -> Path:
    """Where a cached step writes before it succeeds (then renamed to `done`): a crash leaves no half cache."""
    return done.with_name(done.name + ".part")


@dataclass(frozen=True)
class Source:
    commit: str
    epoch: int  # SOURCE_DATE_EPOCH: the commit's time
    version: str
    dirty: bool

    @classmethod
    def of_checkout(cls) -> Source:
        commit = _run(["git", "rev-parse", "HEAD"], what="git rev-parse", cwd=REPO).strip()
        epoch = int(_run(["git", "log", "-1", "--format=%ct"], what="git log", cwd=REPO).strip())
        dirty = bool(_run(["git", "status", "--porcelain"], what="git status", cwd=REPO).strip())
        version = "0.1.0"
        for line in (REPO / "pyproject.toml").read_text().splitlines():
            if line.startswith("version = "):
                version = line.split('"')[1]
                break
        return cls(commit=commit, epoch=epoch, version=version, dirty=dirty)


def debian_root(cache: Path, epoch: int, log: Path) -> Path:
    """Debian 12 with the packages above, cached by the package list (the mirror moves with point releases:
    `--rebuild-base` takes the newest)."""
    key = _key(SUITE, *MIRRORS, *DEBIAN_PACKAGES, *DPKG_EXCLUDES)
    done = cache / f"base-{key}"
    if (done / "rootfs" / "etc" / "os-release").exists():
        return done / "rootfs"
    mmdebstrap = _need("mmdebstrap", "apt-get install -y mmdebstrap (hack/install-deps lists it)")
    part = _partial(done)
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    argv = [mmdebstrap, "--variant=essential", "--mode=root", "--format=directory"]
    argv += [f"--include={','.join(DEBIAN_PACKAGES)}"]
    argv += [f"--dpkgopt={option}" for option in DPKG_EXCLUDES]
    argv += ["--aptopt=Acquire::Retries=3", SUITE, str(part / "rootfs"), *MIRRORS]
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    log.write_text(_run(argv, what="mmdebstrap (the Debian root)", env=env))
    part.rename(done)
    return done / "rootfs"


def _freeze() -> str:
    return _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--all"], what="pip freeze")


def _constraints(freeze: str) -> str:
    return "".join(f"{line}\n" for line in freeze.splitlines() if not line.startswith(("edgetrust", "-e")))


def inputs_key(pyproject: str) -> str:
    """What a build of one commit depends on besides the commit: the Debian package list and the venv's pins."""
    return _key(SUITE, *MIRRORS, *DEBIAN_PACKAGES, *DPKG_EXCLUDES, *PURGE, _constraints(_freeze()), pyproject)


def wheels(cache: Path, source_tree: Path, source: Source, log: Path) -> Path:
    """Every wheel the image installs, pinned to the venv the tests pass in (`pip freeze`), plus pip itself."""
    python = sys.executable
    freeze = _freeze()
    constraints = _constraints(freeze)
    # keyed by the pins and pyproject.toml, not the commit: a new commit rebuilds only its own (pure) wheel
    key = _key(constraints, (source_tree / "pyproject.toml").read_text(), NATIVE_CFLAGS)
    done = cache / f"wheels-{key}"
    if (done / "constraints.txt").exists():
        return done
    part = _partial(done)
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    (part / "constraints.txt.in").write_text(constraints)
    pip_version = next(line.split("==")[1] for line in freeze.splitlines() if line.startswith("pip=="))
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(source.epoch), CFLAGS=NATIVE_CFLAGS)
    out = _run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "--wheel-dir",
            str(part),
            "-c",
            str(part / "constraints.txt.in"),
            f"{source_tree}[{EXTRAS}]",
        ],
        what="pip wheel (the image's Python packages)",
        env=env,
    )
    out += _run(
        [python, "-m", "pip", "download", "--no-deps", "--dest", str(part / "tools"), f"pip=={pip_version}"],
        what="pip download pip",
        env=env,
    )
    log.write_text(out)
    for project_wheel in part.glob("edgetrust-*.whl"):
        project_wheel.unlink()
    (part / "constraints.txt.in").rename(part / "constraints.txt")
    part.rename(done)
    return done


def project_wheel(source_tree: Path, source: Source, work: Path) -> Path:
    """The wheel of the committed tree alone (no dependencies: those are cached above)."""
    out = work / "project-wheel"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(source.epoch))
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(source_tree)],
        what="pip wheel (edgetrust)",
        env=env,
    )
    return next(out.glob("edgetrust-*.whl"))


def _chroot(root: Path, *argv: str, what: str) -> str:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    chroot = _need("chroot", "apt-get install -y coreutils")
    return _run([chroot, str(root), *argv], what=what, env=env)


def edgetrust_root(base: Path, wheel_dir: Path, project: Path, work: Path) -> Path:
    """The base plus the Python packages, compiled, with the non-root user and without caches."""
    root = work / "edgetrust-rootfs"
    shutil.rmtree(root, ignore_errors=True)
    _run(["cp", "-a", str(base), str(root)], what="copy the Debian root")
    _chroot(root, "dpkg", "--purge", "--force-depends", *PURGE, what="dpkg --purge (perl, udev)")
    staged = root / "tmp" / "wheels"
    shutil.copytree(wheel_dir, staged)
    shutil.copy2(project, staged / project.name)
    pip_wheel = next((staged / "tools").glob("pip-*.whl"))
    _chroot(
        root,
        "/usr/bin/python3.11",
        f"/tmp/wheels/tools/{pip_wheel.name}/pip",
        "install",
        "--no-index",
        "--no-cache-dir",
        "--no-compile",
        "--break-system-packages",  # Debian marks its interpreter externally managed; this root is ours alone
        "--root-user-action=ignore",
        "--find-links=/tmp/wheels",
        "--constraint=/tmp/wheels/constraints.txt",
        f"/tmp/wheels/{project.name}[{EXTRAS}]",
        what="pip install in the image",
    )
    shutil.rmtree(staged)
    for leftover in (root / "usr/local/bin").glob("pip*"):
        leftover.unlink()
    # C sources and stubs of compiled extensions: nothing imports them
    for pattern in ("*.c", "*.h", "*.pyx", "*.pxd", "*.pyi"):
        for junk in (root / SITE).rglob(pattern):
            junk.unlink()
    # The kubernetes client's generated API and model modules are 123 MiB as source plus byte code, mostly
    # docstrings; shipped as sourceless byte code without docstrings (-OO) they are 38 MiB. A sourceless legacy .pyc
    # loads at any optimization level. Tracebacks through them show no source line, which generated code can spare.
    generated = [f"/{SITE}/{package}" for package in GENERATED]
    _chroot(
        root,
        "/usr/bin/python3.11",
        "-m",
        "compileall",
        "-q",
        "-b",
        "-o",
        "2",
        "--invalidation-mode",
        "unchecked-hash",
        *generated,
        what="compileall (sourceless) the generated kubernetes client",
    )
    for package in GENERATED:
        for source_file in (root / SITE / package).glob("*.py"):
            source_file.unlink()
    # PEP 552 unchecked-hash: no source mtime inside, never rewritten; one interpreter, one optimization level
    _chroot(
        root,
        "/usr/bin/python3.11",
        "-m",
        "compileall",
        "-q",
        "-j",
        "1",
        "--invalidation-mode",
        "unchecked-hash",
        f"/{SITE}",
        what="compileall in the image",
    )
    # Debian's postinst compiled the stdlib with timestamps; every mtime in the layer becomes SOURCE_DATE_EPOCH,
    # which would make those stale (recompiled in memory at each start, never written on a read-only root)
    _chroot(
        root,
        "/usr/bin/python3.11",
        "-m",
        "compileall",
        "-q",
        "-f",
        "-j",
        "1",
        "--invalidation-mode",
        "unchecked-hash",
        "/usr/lib/python3.11",
        what="compileall the stdlib (hash-based)",
    )
    for relative in REMOVE_AFTER:
        target = root / relative
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    (root / "var" / "log").mkdir()
    (root / "etc" / "machine-id").write_text("")  # systemd's convention: empty means "none", not a shared id
    _add_user(root, "nonroot", NONROOT)
    for directory in ("var/lib/edgetrust", "etc/edgetrust"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    return root


def _add_user(root: Path, name: str, uid: int) -> None:
    home = root / "home" / name
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, uid, uid)
    os.chmod(home, 0o750)  # noqa: S103 (the user's own home; group may read)
    with (root / "etc" / "passwd").open("a") as passwd:
        passwd.write(f"{name}:x:{uid}:{uid}:{name}:/home/{name}:/usr/sbin/nologin\n")
    with (root / "etc" / "group").open("a") as group:
        group.write(f"{name}:x:{uid}:\n")
    shadow = root / "etc" / "shadow"
    if shadow.exists():
        with shadow.open("a") as handle:
            handle.write(f"{name}:!:1::::::\n")


def _minimal_root(work: Path, name: str, uid: int) -> Path:
    """/etc/passwd and /etc/group naming the image's one user, and an empty sticky /tmp."""
    root = work / f"{name}-rootfs"
    shutil.rmtree(root, ignore_errors=True)
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(f"root:x:0:0:root:/:/nonexistent\n{name}:x:{uid}:{uid}::/:/nonexistent\n")
    (root / "etc" / "group").write_text(f"root:x:0:\n{name}:x:{uid}:\n")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 (/tmp is world-writable and sticky in every image)
    return root


def opa_root(work: Path) -> tuple[Path, str]:
    _, version, binary = pinned()["opa"]
    path = peers_cache() / f"opa-{version}" / binary
    if not os.access(path, os.X_OK):
        raise BuildError(f"peer opa {version} is not built: run hack/install-peers opa")
    root = _minimal_root(work, "opa", NONROOT)
    shutil.copy2(path, root / "opa")
    os.chmod(root / "opa", 0o755)  # noqa: S103 (a program everyone may run)
    return root, version.removeprefix("v")


def pause_root(work: Path) -> Path:
    go = _need("go", "Go 1.26 is expected at /usr/local/go/bin on this machine")
    root = _minimal_root(work, "pause", PAUSE_UID)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="", GO111MODULE="off", GOTOOLCHAIN="local")
    _run(
        [
            go,
            "build",
            "-trimpath",
            "-buildvcs=false",
            "-ldflags=-s -w -buildid=",
            "-o",
            str(root / "pause"),
            str(REPO / "hack" / "images" / "pause.go"),
        ],
        what="go build the pause binary",
        env=env,
    )
    return root


@dataclass(frozen=True)
class Written:
    image: BuiltImage
    layout: Path
    oci_archive: Path
    docker_archive: Path

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.image.name,
            "digest": self.image.digest,
            "compressed_bytes": self.image.size,
            "unpacked_bytes": self.image.unpacked_size,
            "oci_layout": str(self.layout),
            "oci_archive": str(self.oci_archive),
            "docker_archive": str(self.docker_archive),
        }


def write_all(image: BuiltImage, out: Path, short: str) -> Written:
    layout = write_oci_layout(image, out / f"{short}.oci")
    return Written(
        image=image,
        layout=layout,
        oci_archive=write_oci_archive(layout, out / f"{short}.oci.tar"),
        docker_archive=write_docker_archive(image, out / f"{short}.docker.tar"),
    )


def build(*, rebuild: bool = False, rebuild_base: bool = False, out: Path | None = None) -> Path:
    """Build the three images of the checked-out commit; returns the path of their images.json. One build at a
    time per build folder (a lock file in it): two checkouts building at once would share the Debian root and
    wheel caches."""
    if os.geteuid() != 0:
        raise BuildError("hack/build-images needs root (mmdebstrap --mode=root, chroot, file owners in layers)")
    cache = build_root()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(cache, rebuild=rebuild, rebuild_base=rebuild_base, out=out)


def _build(cache: Path, *, rebuild: bool, rebuild_base: bool, out: Path | None) -> Path:
    source = Source.of_checkout()
    out = out or cache / "out" / source.commit
    manifest = out / "images.json"
    pyproject = _run(["git", "show", "HEAD:pyproject.toml"], what="git show", cwd=REPO)
    inputs = inputs_key(pyproject)
    if manifest.exists() and not rebuild and json.loads(manifest.read_text()).get("inputs") == inputs:
        return manifest
    if source.dirty:
        print(f"build-images: the tree has uncommitted changes; building the commit {source.commit[:12]}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    work = out / "work"
    work.mkdir()
    timings: dict[str, float] = {}
    started = time.monotonic()

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - started - sum(timings.values()), 1)

    if rebuild_base:
        for old in cache.glob("base-*"):
            shutil.rmtree(old)
    source_tree = work / "source"
    source_tree.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(source_tree, filter="data")
    base = debian_root(cache, source.epoch, out / "mmdebstrap.log")
    mark("debian_root")
    wheel_dir = wheels(cache, source_tree, source, out / "pip-wheel.log")
    mark("wheels")
    labels = {
        "org.opencontainers.image.revision": source.commit,
        "org.opencontainers.image.version": source.version,
        "org.opencontainers.image.source": "edgetrust",
    }
    root = edgetrust_root(base, wheel_dir, project_wheel(source_tree, source, work), work)
    mark("edgetrust_root")
    edgetrust = build_image(
        f"edgetrust.local/edgetrust:{source.version}",
        [Layer.from_root(root, source.epoch)],
        ImageSpec(user=f"{NONROOT}:{NONROOT}", env=PYTHON_ENV, labels=labels, workdir="/home/nonroot"),
        source.epoch,
    )
    written = [write_all(edgetrust, out, "edgetrust")]
    mark("edgetrust_image")
    opa, opa_version = opa_root(work)
    written.append(
        write_all(
            build_image(
                f"edgetrust.local/opa:{opa_version}-static",
                [Layer.from_root(opa, source.epoch)],
                ImageSpec(user=f"{NONROOT}:{NONROOT}", entrypoint=["/opa"], labels=labels),
                source.epoch,
            ),
            out,
            "opa",
        )
    )
    pause = pause_root(work)
    written.append(
        write_all(
            build_image(
                "edgetrust.local/pause:1.0",
                [Layer.from_root(pause, source.epoch)],
                ImageSpec(user=f"{PAUSE_UID}:{PAUSE_UID}", entrypoint=["/pause"], labels=labels),
                source.epoch,
            ),
            out,
            "pause",
        )
    )
    mark("opa_and_pause")
    shutil.rmtree(work)
    report = {
        "commit": source.commit,
        "dirty": source.dirty,
        "inputs": inputs,
        "source_date_epoch": source.epoch,
        "wheels": str(wheel_dir),
        "debian_root": str(base),
        "timings_s": timings,
        "images": {w.layout.name.removesuffix(".oci"): w.summary() for w in written},
    }
    manifest.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/build-images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="build again even if this commit was built")
    parser.add_argument("--rebuild-base", action="store_true", help="take the Debian root from the mirror again")
    parser.add_argument("--out", type=Path, help="output folder (default: <build folder>/out/<commit>)")
    args = parser.parse_args(argv)
    try:
        manifest = build(rebuild=args.rebuild, rebuild_base=args.rebuild_base, out=args.out)
    except BuildError as error:
        print(f"build-images: {error}", file=sys.stderr)
        return 1
    report = json.loads(manifest.read_text())
    for short, image in report["images"].items():
        print(
            f"{short:10} {image['digest']}  {image['compressed_bytes'] / 2**20:6.1f} MiB compressed, "
            f"{image['unpacked_bytes'] / 2**20:6.1f} MiB unpacked  {image['docker_archive']}"
        )
    print(f"build-images: {manifest} (steps: {report['timings_s']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
