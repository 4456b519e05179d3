"""Build the images the chart runs, from this checkout and the package registries only (`make images`).

- edgetrust: Debian 12 (mmdebstrap, variant essential: a shell for the node agent's init container, no apt),
  Debian's python3.11 and the runtime libraries tpm2-pytss loads (libtss2), and the wheel of the committed tree
  (`git archive HEAD`) with every deployable's extra. Wheels are built on this machine (tpm2-pytss compiles
  against libtss2-dev here; the image gets the libraries only), pinned to the versions of the venv the tests run
  in, and installed by pip running on the image's own interpreter in a chroot (so its scheme and shebangs are
  Debian's). Byte code is compiled once, hash-based (PEP 552: no mtimes, nothing to rewrite on a read-only root).
  Runs as uid 65532. What is then left out (Debian tools, unused packages, the generated kubernetes client,
  symbols of native code), and why, is localpeers/imagetrim.py: it keeps the image under 200 MB.
- opa: the pinned OPA binary (hack/peers.lock), byte for byte, as /opa, uid 65532.
- pause: hack/images/pause.go, static, as /pause (containerd's sandbox_image), uid 65535.

Each is written as an OCI layout, an OCI archive (`ctr -n k8s.io images import` keeps its digest) and a docker-archive
under the build folder (EDGETRUST_IMAGES, default ~/.cache/edgetrust/images), outside the repository, with an
`images.json` that lists digests, sizes and files. The Debian root and the wheels are cached by their inputs; a
build of one commit is reused while its inputs (package list, the venv's pins, this builder) are the same, unless
`--rebuild`. `--push`/`--sign-key` then push and sign them (localpeers/imagepush.py). Needs root (mmdebstrap
--mode=root, chroot).
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

from localpeers import imagepush, imagetrim
from localpeers.imagetrim import SITE
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
    "libstdc++6",  # grpc's cygrpc, protobuf's upb and frozenlist link it (NEEDED); the wheels do not bundle it
    "libpq5",  # for psycopg-c (localpeers/imagetrim.py: instead of psycopg-binary's bundled copy)
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
PYTHON_ENV = (
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",  # the root is read-only: byte code ships compiled, nothing is written
    "PYTHONUNBUFFERED=1",
    "HOME=/home/nonroot",
    "LANG=C.UTF-8",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
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


def _strip_version(strip: str) -> str:
    return _run([strip, "--version"], what="strip --version").splitlines()[0]


def inputs_key(pyproject: str) -> str:
    """What a build of one commit depends on besides the commit: the Debian package list, the venv's pins, the
    builder itself (this module and what it leaves out) and the strip that strips the native code."""
    builder = (Path(__file__).read_text(), Path(imagetrim.__file__).read_text())
    strip = _strip_version(_need("strip", "apt-get install -y binutils"))
    return _key(SUITE, *MIRRORS, *DEBIAN_PACKAGES, *DPKG_EXCLUDES, _constraints(_freeze()), pyproject, *builder, strip)


def wheels(cache: Path, source_tree: Path, source: Source, log: Path) -> Path:
    """Every wheel the image installs, pinned to the venv the tests pass in (`pip freeze`), plus pip itself."""
    python = sys.executable
    freeze = _freeze()
    constraints = _constraints(freeze)
    # keyed by the pins and pyproject.toml, not the commit: a new commit rebuilds only its own (pure) wheel
    key = _key(constraints, (source_tree / "pyproject.toml").read_text(), NATIVE_CFLAGS, "psycopg-c")
    done = cache / f"wheels-{key}"
    if (done / "constraints.txt").exists():
        return done
    part = _partial(done)
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    (part / "constraints.txt.in").write_text(constraints)
    pins = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    _need("pg_config", "apt-get install -y libpq-dev (psycopg-c compiles against Debian's libpq)")
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
        [python, "-m", "pip", "download", "--no-deps", "--dest", str(part / "tools"), f"pip=={pins['pip']}"],
        what="pip download pip",
        env=env,
    )
    # psycopg's C implementation, of the venv's psycopg version, against the libpq5 the image installs
    out += _run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-binary=psycopg-c",
            "--wheel-dir",
            str(part / "tools"),
            f"psycopg-c=={pins['psycopg']}",
        ],
        what="pip wheel psycopg-c",
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
    # a fixed hash seed: byte code marshals set and frozenset constants in the strings' hash order, which is
    # seeded per process (a safeguard: the difference seen between two builds was timestamp byte code, below)
    env["PYTHONHASHSEED"] = "0"
    chroot = _need("chroot", "apt-get install -y coreutils")
    return _run([chroot, str(root), *argv], what=what, env=env)


#: byte code as the image's interpreter compiles it: every file again (-f), hash-based (PEP 552 unchecked-hash: no
#: mtime inside, never rewritten on a read-only root), one worker so the order is fixed
_HASH_COMPILE = (
    "/usr/bin/python3.11", "-m", "compileall", "-q", "-f", "-j", "1", "--invalidation-mode", "unchecked-hash",
)  # fmt: skip


def edgetrust_root(base: Path, wheel_dir: Path, project: Path, work: Path) -> Path:
    """The base plus the Python packages, compiled, with the non-root user, without caches and without what
    localpeers/imagetrim.py leaves out."""
    root = work / "edgetrust-rootfs"
    shutil.rmtree(root, ignore_errors=True)
    _run(["cp", "-a", str(base), str(root)], what="copy the Debian root")

    def chroot(*argv: str, what: str) -> str:
        return _chroot(root, *argv, what=what)

    imagetrim.purge_debian(chroot)
    staged = root / "tmp" / "wheels"
    shutil.copytree(wheel_dir, staged)
    shutil.copy2(project, staged / project.name)
    pip = ["/usr/bin/python3.11", f"/tmp/wheels/tools/{next((staged / 'tools').glob('pip-*.whl')).name}/pip"]
    quiet = ["--no-cache-dir", "--root-user-action=ignore", "--break-system-packages"]  # this root is ours alone
    chroot(
        *pip,
        "install",
        "--no-index",
        "--no-compile",
        *quiet,
        "--find-links=/tmp/wheels",
        "--constraint=/tmp/wheels/constraints.txt",
        f"/tmp/wheels/{project.name}[{EXTRAS}]",
        what="pip install in the image",
    )
    chroot(*pip, "uninstall", "--yes", *quiet, *imagetrim.LEFT_OUT_DISTRIBUTIONS, what="pip uninstall (left out)")
    psycopg_c = next((staged / "tools").glob("psycopg_c-*.whl")).name
    chroot(
        *pip,
        "install",
        "--no-index",
        "--no-deps",
        "--no-compile",
        *quiet,
        f"/tmp/wheels/tools/{psycopg_c}",
        what="pip install psycopg-c",
    )
    shutil.rmtree(staged)
    for leftover in (root / "usr/local/bin").glob("pip*"):
        leftover.unlink()
    for script in imagetrim.LEFT_OUT_SCRIPTS:
        (root / "usr/local/bin" / script).unlink(missing_ok=True)
    # C sources and stubs of compiled extensions: nothing imports them
    for pattern in ("*.c", "*.h", "*.pyx", "*.pxd", "*.pyi"):
        for junk in (root / SITE).rglob(pattern):
            junk.unlink()
    imagetrim.leave_out_generated(root)
    imagetrim.strip_native(root, _need("strip", "apt-get install -y binutils"))
    # PEP 552 unchecked-hash: no source mtime inside, never rewritten; one interpreter, one optimization level.
    # Forced: something run in the chroot after pip had imported attrs, leaving timestamp-based byte code that
    # compileall would keep (it held the build's time, so two builds of one commit differed).
    chroot(*_HASH_COMPILE, f"/{SITE}", what="compileall in the image")
    imagetrim.remove_after(root)
    # Debian's postinst compiled the stdlib with timestamps; every mtime in the layer becomes SOURCE_DATE_EPOCH,
    # which would make those stale (recompiled in memory at each start, never written on a read-only root)
    chroot(*_HASH_COMPILE, "/usr/lib/python3.11", what="compileall the stdlib (hash-based)")
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
    parser.add_argument("--push", metavar="REGISTRY", help="then push to REGISTRY (host[:port]) with the pinned oras")
    parser.add_argument("--prefix", default="edgetrust", help="repository prefix under REGISTRY (default edgetrust)")
    parser.add_argument("--ca-file", type=Path, help="CA certificate of REGISTRY's TLS certificate")
    parser.add_argument(
        "--sign-key", type=Path, help="then sign each pushed digest with this cosign key (0600; COSIGN_PASSWORD)"
    )
    args = parser.parse_args(argv)
    if args.sign_key is not None and args.push is None:
        parser.error("--sign-key signs what --push pushed: give --push REGISTRY too")
    try:
        manifest = build(rebuild=args.rebuild, rebuild_base=args.rebuild_base, out=args.out)
        if args.push is not None:
            target = imagepush.Target(args.push, prefix=args.prefix, ca_file=args.ca_file, sign_key=args.sign_key)
            imagepush.push(manifest, target)
    except (BuildError, imagepush.PushError) as error:
        print(f"build-images: {error}", file=sys.stderr)
        return 1
    report = json.loads(manifest.read_text())
    for short, image in report["images"].items():
        print(
            f"{short:10} {image['digest']}  {image['compressed_bytes'] / 2**20:6.1f} MiB compressed, "
            f"{image['unpacked_bytes'] / 2**20:6.1f} MiB unpacked  {image['docker_archive']}"
        )
    print(f"build-images: {manifest} (steps: {report['timings_s']})")
    if args.push is not None:
        for short, pushed in report["pushed"][args.push]["images"].items():
            signature = f"  signature {pushed['signature_digest']}" if "signature_digest" in pushed else ""
            print(f"pushed     {short:10} {pushed['pinned']}{signature}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
