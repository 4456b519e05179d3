"""The node agent in a container with a read-only root filesystem (the chart's): no writable temporary directory
anywhere, and its state directory is all it needs for the private gRPC socket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetrust._internal.files import private_directory
from trustd.agent.peercred import AgentSocketError, PeerCredFront


def _no_temporary_directory() -> str:
    raise FileNotFoundError("No usable temporary directory found in ['/tmp', '/var/tmp', '/usr/tmp']")


@pytest.fixture
def short() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="et-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_state_directory_is_enough_without_a_temporary_one(short: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = private_directory(short / "s")
    monkeypatch.setattr(tempfile, "gettempdir", _no_temporary_directory)
    front = PeerCredFront(short / "api.sock", private_parent=state)
    front.open()
    assert front.private_dir.parent == state
    asyncio.run(front.close())


def test_a_deep_state_directory_and_no_temporary_one_is_refused_by_name(
    short: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = private_directory(short / ("d" * 100))
    monkeypatch.setattr(tempfile, "gettempdir", _no_temporary_directory)
    front = PeerCredFront(short / "api.sock", private_parent=deep)
    with pytest.raises(AgentSocketError, match="no writable temporary directory"):
        front.open()
