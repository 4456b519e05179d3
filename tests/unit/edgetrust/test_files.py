"""Atomic, durable writes (edgetrust/_internal/files.py): the final mode from the first byte, the old content or
the new and nothing between, no temporary left behind, the directory fsynced after the rename, and a planted
file or link at the temporary name never written through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgetrust._internal import files
from edgetrust._internal.files import UnsafeDirectoryError, private_directory, write_private, write_public
from trustd.errors import PrivateFileError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_private_and_public_files_get_their_mode_and_replace_the_old_content(tmp_path: Path) -> None:
    key, cert = tmp_path / "keys" / "svid.key", tmp_path / "keys" / "svid.pem"
    write_private(key, b"old key")
    write_private(key, b"new key")
    write_public(cert, b"cert")
    assert key.read_bytes() == b"new key"
    assert _mode(key) == 0o600
    assert _mode(cert) == 0o644 & ~_umask()
    assert _mode(key.parent) == 0o700  # a missing parent is made private
    assert sorted(p.name for p in key.parent.iterdir()) == ["svid.key", "svid.pem"]  # no temporary left


def test_a_secret_is_never_readable_by_others_not_even_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_write = os.write

    def spying_write(fd: int, data: bytes | memoryview) -> int:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data[:3])  # a short write: the rest must still be written

    monkeypatch.setattr(os, "write", spying_write)
    write_private(tmp_path / "ca.key", b"0123456789")
    assert (tmp_path / "ca.key").read_bytes() == b"0123456789"
    assert seen
    assert set(seen) == {0o600}


def test_the_file_and_then_its_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def spying_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def spying_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    monkeypatch.setattr(os, "replace", spying_replace)
    write_public(tmp_path / "applied-revision.json", b"{}")
    assert synced == ["file", "rename", "dir"]
    synced.clear()
    write_private(tmp_path / "status.json", b"{}", sync=False)  # still atomic, only not forced to disk
    assert synced == ["rename"]
    synced.clear()
    (tmp_path / "svid.key.new").write_bytes(b"k")
    (tmp_path / "svid.pem.new").write_bytes(b"c")
    files.replace(tmp_path / "svid.key.new", tmp_path / "svid.key", sync=False)
    files.replace(tmp_path / "svid.pem.new", tmp_path / "svid.pem")
    assert synced == ["rename", "rename", "dir"]  # two renames that land together, one directory fsync


def test_a_failed_write_leaves_the_old_content_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "current.tar.gz"
    write_public(target, b"good")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_public(target, b"half")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["current.tar.gz"]


def test_a_link_planted_beside_the_target_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (tmp_path / "svid.key").symlink_to(victim)  # the target itself a link: replaced, not followed
    write_private(tmp_path / "svid.key", b"key")
    assert victim.read_bytes() == b"untouched"
    assert not (tmp_path / "svid.key").is_symlink()
    assert (tmp_path / "svid.key").read_bytes() == b"key"


def test_private_directory_refuses_a_symlink_and_trustd_says_so_as_its_own_error(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafeDirectoryError, match="not a directory"):
        private_directory(tmp_path / "link")
    # imported here: the enroll client's module loads the TPM library, and unit modules import without it
    from trustd.agent.enroll_client import private_out

    with pytest.raises(PrivateFileError, match="not a directory") as raised:
        private_out(tmp_path / "link")
    assert raised.value.code == "private_file"
    assert list(target.iterdir()) == []


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
