"""A private containerd for import tests: its own root, state and sockets under a test's folder, the CRI plugin
off and no TCP listener, so it neither sees nor touches the real cluster's containerd (one per machine)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from localpeers.processes import running

Ctr = Callable[..., subprocess.CompletedProcess[str]]


def _config(directory: Path) -> Path:
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


@contextmanager
def private_containerd(directory: Path) -> Iterator[Ctr]:
    """Yields `ctr(*args)` against the private containerd's k8s.io namespace; on exit checks that no mount of
    it outlived it (the unpack mounts overlay snapshots only for a moment)."""
    containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
    if containerd is None or ctr is None:
        pytest.fail("containerd is not installed: apt-get install -y containerd (hack/install-deps)", pytrace=False)
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / "containerd.sock"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ctr, "-a", str(socket), "-n", "k8s.io", *args], capture_output=True, text=True, timeout=300, check=False
        )

    try:
        with running([containerd, "--config", str(_config(directory))], ready=socket.exists, log=directory / "log"):
            yield run
    finally:
        leftover = [row for row in Path("/proc/mounts").read_text().splitlines() if str(directory) in row]
        assert leftover == []


def listed_digest(ctr: Ctr, name: str) -> str:
    """The manifest digest containerd holds for the image `name` (`ctr images ls`: REF TYPE DIGEST ...)."""
    listed = ctr("images", "ls")
    assert listed.returncode == 0, listed.stderr
    row = next((line for line in listed.stdout.splitlines() if line.startswith(name + " ")), None)
    assert row is not None, listed.stdout
    return row.split()[2]
