"""Locate the Go peers built by hack/install-peers; a missing one fails the test with the command to run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def peers_cache() -> Path:
    return Path(os.environ.get("EDGETRUST_PEERS", Path.home() / ".cache" / "edgetrust" / "peers"))


def pinned() -> dict[str, tuple[str, str, str]]:
    """name -> (module, version, binary), from hack/peers.lock."""
    entries: dict[str, tuple[str, str, str]] = {}
    for line in (REPO / "hack" / "peers.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, module, version, binary = line.split()[:4]
            entries[name] = (module, version, binary)
    return entries


def peer(name: str) -> Path:
    module, version, binary = pinned()[name]
    path = peers_cache() / f"{name}-{version}" / binary
    if not os.access(path, os.X_OK):
        pytest.fail(f"peer {name} {version} ({module}) is not built: run hack/install-peers {name}", pytrace=False)
    return path
