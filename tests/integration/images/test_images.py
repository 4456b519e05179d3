"""The images `make images` builds (localpeers/images.py): their size, their user, that every entry point starts
as uid 65532 on a read-only root, and that a push to the local registry keeps the built digest and carries a cosign
signature that verifies.

The build is reused when this commit was built already (images.json under ~/.cache/edgetrust/images/out/<commit>):
cold it takes about 4 minutes (mmdebstrap, pip wheel), warm about 1.5 minutes, cached a few milliseconds.
Needs root: mmdebstrap --mode=root, chroot, and the mount namespace the entry points run in.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localpeers.images import ENTRYPOINTS, NONROOT, PAUSE_UID, BuildError, build
from localpeers.oci_image import read_oci_layout, unpack_layers
from localpeers.peers import peer
from localpeers.processes import running
from localpeers.registry import Registry, running_registry
from localpeers.tlsca import TestCA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MIB = 2**20
# The goal is 200 MB; the image is 93 MiB compressed and 302 MiB unpacked today (the kubernetes client is
# most of it, see localpeers/images.py). These bounds catch a regression; the unpacked one is above the goal.
COMPRESSED_LIMIT_MIB = 120
UNPACKED_LIMIT_MIB = 310


@pytest.fixture(scope="module")
def images() -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("building images needs root (mmdebstrap --mode=root, chroot)")
    try:
        manifest = build()
    except BuildError as error:
        pytest.fail(str(error), pytrace=False)
    report: dict[str, Any] = json.loads(manifest.read_text())
    return report


@pytest.fixture(scope="module")
def edgetrust_root(images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edgetrust-root")
    unpack_layers(Path(images["images"]["edgetrust"]["oci_layout"]), root)
    root.chmod(0o755)  # mktemp made it 0700: the image's "/" must be traversable by its user
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    ca = TestCA(tmp_path_factory.mktemp("ca"))
    with running_registry(tmp_path_factory.mktemp("registry"), ca) as running:
        yield running


def run_read_only(root: Path, config: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` in `root` as the image's user with the image's environment, the root bind-mounted read-only inside a
    private mount namespace (nothing to restore on the host: the namespace ends with the process)."""
    user = config["config"]["User"]
    env = " ".join(shlex.quote(item) for item in config["config"]["Env"])
    command = " ".join(shlex.quote(arg) for arg in argv)
    where = shlex.quote(str(root))
    script = (
        f"mount --bind {where} {where} && mount -o remount,bind,ro {where} && "
        f"exec chroot --userspec={shlex.quote(user)} {where} /usr/bin/env -i {env} {command}"
    )
    unshare = shutil.which("unshare")
    assert unshare is not None
    return subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sizes_and_users(images: dict[str, Any]) -> None:
    edgetrust = images["images"]["edgetrust"]
    assert edgetrust["compressed_bytes"] <= COMPRESSED_LIMIT_MIB * MIB, edgetrust
    assert edgetrust["unpacked_bytes"] <= UNPACKED_LIMIT_MIB * MIB, edgetrust
    expected = {"edgetrust": NONROOT, "opa": NONROOT, "pause": PAUSE_UID}
    for short, uid in expected.items():
        digest, config = read_oci_layout(Path(images["images"][short]["oci_layout"]))
        assert digest == images["images"][short]["digest"]
        assert config["config"]["User"] == f"{uid}:{uid}"
        assert config["config"]["Labels"]["org.opencontainers.image.revision"] == images["commit"]
    assert images["images"]["opa"]["unpacked_bytes"] < 64 * MIB
    assert images["images"]["pause"]["unpacked_bytes"] < 4 * MIB


def test_no_caches_docs_or_package_manager(edgetrust_root: Path) -> None:
    root = edgetrust_root
    assert not (root / "usr/bin/apt-get").exists()
    assert not (root / "var/lib/apt").exists()
    assert not (root / "var/cache/apt").exists()
    assert not [p for p in (root / "usr/share/man").rglob("*") if p.is_file()]
    docs = [p for p in (root / "usr/share/doc").rglob("*") if p.is_file() and p.name != "copyright"]
    assert docs == []
    # perl-base (essential, /usr/bin/perl) stays; the full perl usrmerge pulled in and udev are purged
    assert not (root / "usr/share/perl").exists()
    assert not (root / "usr/bin/udevadm").exists()
    assert not list((root / "usr/local/bin").glob("pip*"))
    # byte code is hash-based (flags 0b01: unchecked), so nothing compares mtimes or wants to rewrite it
    pyc = next((root / "usr/local/lib/python3.11/dist-packages/edgetrust").rglob("*.cpython-311.pyc"))
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_entrypoints_start_as_nonroot_on_a_read_only_root(
    images: dict[str, Any], edgetrust_root: Path, entrypoint: str
) -> None:
    _, config = read_oci_layout(Path(images["images"]["edgetrust"]["oci_layout"]))
    result = run_read_only(edgetrust_root, config, entrypoint, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower(), result.stdout[-2000:]
    result = run_read_only(edgetrust_root, config, "/usr/bin/id", "-u")
    assert result.stdout.strip() == str(NONROOT)
    # the node agent's init container runs `sh -c` (charts/edgetrust/templates/node-agent.yaml)
    result = run_read_only(edgetrust_root, config, "/bin/sh", "-c", "command -v trustctl")
    assert result.stdout.strip() == "/usr/local/bin/trustctl", result.stderr


def test_the_root_is_really_read_only_and_tpm2_pytss_loads(images: dict[str, Any], edgetrust_root: Path) -> None:
    _, config = read_oci_layout(Path(images["images"]["edgetrust"]["oci_layout"]))
    wrote = run_read_only(edgetrust_root, config, "/usr/bin/touch", "/home/nonroot/x")
    assert wrote.returncode != 0
    assert "Read-only file system" in wrote.stderr
    # the native modules find their libraries: tpm2-pytss Debian's libtss2 (runtime only, no -dev package), grpc
    # (the node agent's Workload API) libstdc++
    loaded = run_read_only(edgetrust_root, config, "/usr/bin/python3.11", "-c", "import tpm2_pytss, grpc; print('ok')")
    assert loaded.stdout.strip() == "ok", loaded.stderr[-2000:]
    assert not (edgetrust_root / "usr/include/tss2").exists()


def test_pushed_digest_is_the_built_one_and_the_signature_verifies(
    images: dict[str, Any], registry: Registry, tmp_path: Path
) -> None:
    key, public = registry.cosign_keypair("images")
    for short in ("edgetrust", "opa", "pause"):
        built = images["images"][short]
        tag = built["name"].rpartition(":")[2]
        reference = f"{registry.host}/edgetrust/{short}:{tag}"
        registry.run(
            peer("oras"),
            "cp",
            "--to-ca-file",
            str(registry.ca_file),
            "--from-oci-layout",
            f"{built['oci_layout']}:{tag}",
            reference,
            cwd=tmp_path,
        )
        served = registry.http_get_json(f"edgetrust/{short}/manifests/{tag}")
        pushed = registry.run(
            peer("oras"), "resolve", "--ca-file", str(registry.ca_file), reference, cwd=tmp_path
        ).strip()
        assert pushed == built["digest"], served
        registry.cosign_sign(f"{registry.host}/edgetrust/{short}@{pushed}", key)
        verified = registry.cosign_verify(f"{registry.host}/edgetrust/{short}@{pushed}", public)
        assert verified.returncode == 0, verified.stderr[-2000:]


def _containerd_config(directory: Path) -> Path:
    """A private containerd: its own root, state and sockets under `directory`, no CRI plugin, no TCP listener."""
    config = directory / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{directory}/root"\n'
        f'state = "{directory}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{directory}/containerd.sock"\n'
        f'[ttrpc]\n  address = "{directory}/containerd.sock.ttrpc"\n'
        '[debug]\n  address = ""\n'
        '[metrics]\n  address = ""\n'
    )
    return config


def test_containerd_import_of_the_oci_archive_keeps_the_signed_digest(images: dict[str, Any], tmp_path: Path) -> None:
    """What the real cluster does without a registry: `ctr -n k8s.io images import`. The OCI archive keeps the
    manifest digest that cosign signed; a docker-archive would be converted to a Docker manifest (another digest)."""
    containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
    if containerd is None or ctr is None:
        pytest.fail("containerd is not installed: apt-get install -y containerd (hack/install-deps)", pytrace=False)
    socket = tmp_path / "containerd.sock"
    config = _containerd_config(tmp_path)
    try:
        with running([containerd, "--config", str(config)], ready=socket.exists, log=tmp_path / "containerd.log"):
            for short in ("edgetrust", "opa", "pause"):
                built = images["images"][short]
                imported = subprocess.run(
                    [ctr, "-a", str(socket), "-n", "k8s.io", "images", "import", built["oci_archive"]],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                assert imported.returncode == 0, imported.stderr[-2000:]
                listed = subprocess.run(
                    [ctr, "-a", str(socket), "-n", "k8s.io", "images", "ls", "-q", f"name=={built['name']}"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
                assert listed.stdout.split() == [built["name"]]
                checked = subprocess.run(
                    [ctr, "-a", str(socket), "-n", "k8s.io", "images", "ls"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
                line = next(row for row in checked.stdout.splitlines() if row.startswith(built["name"] + " "))
                assert built["digest"] in line.split(), line
    finally:
        # the unpack mounts overlay snapshots only for a moment; none may outlive containerd
        leftover = [row for row in Path("/proc/mounts").read_text().splitlines() if str(tmp_path) in row]
        assert leftover == []
