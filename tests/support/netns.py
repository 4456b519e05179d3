"""A peer in its own network namespace, reached over a veth pair whose link we can cut or degrade for real
(`ip link`, `tc netem`): partitions and bad links between the hub and an edge cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Link:
    namespace: str
    peer_address: str  # inside the namespace
    local_address: str  # on our side of the veth
    local_device: str

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def down(self) -> None:
        _ip("link", "set", self.local_device, "down")

    def up(self) -> None:
        _ip("link", "set", self.local_device, "up")

    def degrade(self, *qdisc: str) -> None:
        """e.g. degrade("netem", "delay", "100ms", "loss", "10%"), or degrade("tbf", "rate", "64kbit", ...) where
        the kernel has no netem (this machine's has tbf but not sch_netem)."""
        subprocess.run(["tc", "qdisc", "replace", "dev", self.local_device, "root", *qdisc], check=True)

    def has_netem(self) -> bool:
        probe = ["tc", "qdisc", "replace", "dev", self.local_device, "root", "netem", "delay", "1ms"]
        available = subprocess.run(probe, capture_output=True).returncode == 0
        subprocess.run(["tc", "qdisc", "del", "dev", self.local_device, "root"], capture_output=True)
        return available

    def heal(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.local_device, "root"], check=False, capture_output=True)
        self.up()


@contextmanager
def namespace_link(name: str, subnet: int = 213) -> Iterator[Link]:
    """A network namespace joined to this one by a veth pair, addressed in 198.19.<subnet>.0/24 (inside
    198.18.0.0/15, the range reserved for benchmarking): a test host of our own that no route leads out of."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.fail("ip and tc are missing: run hack/install-deps (apt-get install iproute2)", pytrace=False)
    suffix = f"{os.getpid() % 10000}"
    namespace = f"et-{name}-{suffix}"
    inside, outside = f"eti{suffix}", f"eto{suffix}"
    try:
        _ip("netns", "add", namespace)
    except subprocess.CalledProcessError as exc:
        reason = exc.stderr.strip()
        pytest.fail(f"cannot create a network namespace here ({reason}): these tests need root", pytrace=False)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("addr", "add", f"198.19.{subnet}.2/24", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"198.19.{subnet}.1/24", "dev", inside)
        _ip("netns", "exec", namespace, "ip", "link", "set", inside, "up")
        _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield Link(namespace, f"198.19.{subnet}.1", f"198.19.{subnet}.2", outside)
    finally:
        subprocess.run(["ip", "link", "del", outside], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
