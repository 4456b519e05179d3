"""What the node agent keeps to itself: directories only its uid can enter, and the private gRPC directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetrust._internal.files import UnsafeDirectoryError, private_directory
from localpeers.tlsca import TestCA
from trustd.agent.k8s import KubeAttestor
from trustd.agent.peercred import AgentSocketError, PeerCredFront


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_private_directory_is_made_0700_and_a_loose_one_of_ours_is_tightened(tmp_path: Path) -> None:
    made = private_directory(tmp_path / "new" / "state")
    assert _mode(made) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert _mode(private_directory(loose)) == 0o700


def test_private_directory_refuses_a_symlink_and_someone_elses(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafeDirectoryError, match="not a directory"):
        private_directory(tmp_path / "link")
    if os.geteuid() != 0:
        pytest.fail("this test runs as root (it hands a directory to uid 65534)", pytrace=False)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafeDirectoryError, match="belongs to uid 65534"):
        private_directory(theirs)
    assert _mode(theirs) == 0o755  # not touched


@pytest.fixture
def short() -> Iterator[Path]:
    """A short directory (pytest's tmp_path can be too deep for a socket path)."""
    path = Path(tempfile.mkdtemp(prefix="et-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_private_grpc_directory_is_0700_and_removed_on_close(tmp_path: Path, short: Path) -> None:
    state = private_directory(short / "s")
    front = PeerCredFront(tmp_path / "api.sock", private_parent=state)
    front.open()
    private = front.private_dir
    assert private.parent == state
    assert _mode(private) == 0o700
    assert front.backend_address == f"unix:{private}/grpc.sock"
    asyncio.run(front.close())
    assert not private.exists()


def test_a_parent_others_may_rename_in_is_refused(tmp_path: Path, short: Path) -> None:
    shared = short / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by all, no sticky bit: another uid could swap our directory
    with pytest.raises(AgentSocketError, match="without the sticky bit"):
        PeerCredFront(tmp_path / "api.sock", private_parent=shared).open()


def test_a_parent_too_deep_for_a_socket_path_falls_back_to_the_temporary_directory(tmp_path: Path) -> None:
    deep = private_directory(tmp_path / ("d" * 100))
    front = PeerCredFront(tmp_path / "api.sock", private_parent=deep)
    front.open()
    try:
        assert front.private_dir.parent != deep
        assert len(os.fsencode(str(front.backend))) < 100
    finally:
        asyncio.run(front.close())


def test_a_callers_cgroup_is_taken_when_it_connects(short: Path) -> None:
    """The pid may change hands while the connection lives (the caller exits, another pod's process gets the
    pid): the cgroup recorded at connect time is what the pid's cgroup must still be when it asks."""
    proc = short / "proc"
    (proc / str(os.getpid())).mkdir(parents=True)
    cgroup = proc / str(os.getpid()) / "cgroup"
    cgroup.write_text("0::/kubepods/besteffort/pod1b4e2c3d-aaaa-bbbb-cccc-0123456789ab/c\n")

    async def scenario() -> tuple[list[str | None], str]:
        front = PeerCredFront(short / "api.sock", private_parent=private_directory(short / "s"), proc_root=proc)
        front.open()
        backend = await asyncio.start_unix_server(lambda r, w: None, path=str(front.backend))
        await front.start()
        try:
            _, writer = await asyncio.open_unix_connection(str(short / "api.sock"))
            for _ in range(100):
                if front.callers:
                    break
                await asyncio.sleep(0.01)
            cgroup.write_text("0::/kubepods/besteffort/podffffffff-ffff-ffff-ffff-ffffffffffff/c\n")  # pid reused
            recorded = [c.cgroup for c in front.callers.values()]
            peers = list(front.callers)
            writer.close()
            return recorded, peers[0]
        finally:
            await front.close()
            backend.close()

    recorded, peer = asyncio.run(scenario())
    assert recorded == ["0::/kubepods/besteffort/pod1b4e2c3d-aaaa-bbbb-cccc-0123456789ab/c\n"]
    assert peer.startswith(f"unix:{short}/s/edgetrust-agent-")  # keyed by the relay connection's own name


def test_a_pid_now_in_another_pods_cgroup_names_no_pod(short: Path) -> None:
    proc = short / "proc" / "4242"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("0::/kubepods/besteffort/podffffffff-ffff-ffff-ffff-ffffffffffff/c\n")
    token = short / "token"
    token.write_text("unused")
    attestor = KubeAttestor(
        node="node-1",
        url="https://127.0.0.1:1",  # never asked: the mismatch is decided before any lookup
        token_file=token,
        ca_file=TestCA(short / "ca").ca_file,
        proc_root=short / "proc",
    )

    async def ask() -> frozenset[str]:
        try:
            return await attestor.selectors(4242, "0::/kubepods/besteffort/pod1b4e2c3d-aaaa-bbbb-cccc-0123456789ab/c\n")
        finally:
            await attestor.close()

    assert asyncio.run(ask()) == frozenset()
