"""`python -m localpeers.realcluster up|down`: the command starts a whole node, and after `down` (SIGTERM to the
supervisor, the same path a killed test session takes) the machine is as it was before `up`.

This module runs before the other modules of this folder (file order), because one real cluster at a time can
run on a machine: the session's shared cluster starts with the first test that asks for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from localpeers import hoststate
from localpeers.nodeconfig import DUMMY, RUNTIME
from localpeers.realcluster import STATE_FILE, peer_path, pids_mentioning

_OWNED_MOUNTS = ("/run/edgetrust-node", "/run/netns/cni-", "/var/lib/kubelet", "/run/containerd", "/var/lib/containerd")
#: what the cluster names in links, routes and rules: anything else changed meanwhile is another session's
_MARKS = ("etbr0", "etnode0", "veth", "198.18.")


def _cli(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.run(
        [sys.executable, "-m", "localpeers.realcluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )


def _ours(differences: list[str], folder: Path) -> list[str]:
    """Other sessions on this machine (the lead's tests make network namespaces, veths and mounts; another
    helper mounts root filesystems) change things meanwhile: keep the differences a cluster could have made.
    Sysctls, iptables, nft tables, ipsets and cgroups are compared whole."""
    kept = []
    for line in differences:
        kind, _, item = line.partition(": ")
        item = item.split(" ", 1)[1] if item.startswith(("new ", "gone ")) else item
        if kind == "mounts" and not item.startswith((*_OWNED_MOUNTS, str(folder))):
            continue
        if kind == "netns" and not item.startswith("cni-"):
            continue
        if kind in ("links", "routes", "rules") and not any(mark in item for mark in _MARKS):
            continue
        if kind.startswith("path ") and hoststate._user_of(kind.split()[1]) is not None:
            continue  # made meanwhile and used by another session's program (its containerd: /run/containerd)
        kept.append(line)
    return kept


def test_up_then_down_leaves_the_machine_as_it_was(tmp_path: Path) -> None:
    assert subprocess.run(["ip", "link", "show", DUMMY], capture_output=True).returncode != 0, "a cluster runs already"
    folder = tmp_path / "cluster"
    before = hoststate.snapshot()
    started = time.monotonic()
    up = _cli("up", "--dir", str(folder), timeout_s=660)
    try:
        assert up.returncode == 0, up.stderr
        print(f"\nup: {time.monotonic() - started:.1f}s; {up.stdout.strip()}")
        nodes = subprocess.run(
            [str(peer_path("kubectl")), f"--kubeconfig={folder / 'kubeconfig'}", "get", "nodes", "-o", "name"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert nodes.stdout.strip() == "node/edgetrust-node", nodes.stderr
        during = hoststate.snapshot()
        assert hoststate.differences(before, during), "the cluster changed nothing: the comparison below is blind"
    finally:
        down = _cli("down", "--dir", str(folder), timeout_s=200)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (folder / STATE_FILE).exists()
    assert not pids_mentioning(str(folder)), "a process of the cluster still runs"
    assert not pids_mentioning(str(RUNTIME)), "a containerd shim of the cluster still runs"
    assert _ours(hoststate.differences(before, hoststate.snapshot()), folder) == []


def test_down_restores_the_machine_after_the_supervisor_was_killed(tmp_path: Path) -> None:
    """SIGKILL leaves no teardown: `down` stops the programs left behind and restores from machine-before.json."""
    folder = tmp_path / "cluster"
    before = hoststate.snapshot()
    up = _cli("up", "--dir", str(folder), timeout_s=660)
    try:
        assert up.returncode == 0, up.stderr
        supervisor = int((folder / "cluster.pid").read_text())
        os.kill(supervisor, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{supervisor}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids_mentioning(str(folder)), "the node's programs outlive their supervisor: the case tested here"
    finally:
        down = _cli("down", "--dir", str(folder), timeout_s=200)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not pids_mentioning(str(folder))
    assert not pids_mentioning(str(RUNTIME))
    assert _ours(hoststate.differences(before, hoststate.snapshot()), folder) == []
