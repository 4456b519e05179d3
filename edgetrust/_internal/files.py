"""Files written so that a crash leaves the old content or the new, never half of one, and the new one stays.

Every write goes to a fresh temporary name beside the target (O_EXCL: never through a file or link someone
planted), with its final mode from the first byte (0600 for secrets: no moment when a key is readable by
others), is fsynced, renamed over the target, and then the directory is fsynced: without that last step the
rename itself may not survive a power cut, and an agent can come back with no key, or with the rollback guard
of the revision before (re-opening a rollback). One implementation for the hub, the node agent, `trustctl
enroll` and the syncer.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


class UnsafeDirectoryError(Exception):
    """A directory that must be private is not ours to trust; the caller converts it into its own error."""


def write_private(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write a secret (a key, a token, state only this uid may read): 0600, atomically."""
    write_atomic(path, data, mode=PRIVATE_MODE, sync=sync)


def write_public(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write what others may read (a certificate, a bundle, a status file): 0644 (less the umask), atomically."""
    write_atomic(path, data, mode=PUBLIC_MODE, sync=sync)


def write_atomic(path: Path, data: bytes, *, mode: int, sync: bool = True) -> None:
    """Replace `path` with `data` in one step; with `sync`, durably (file and directory fsynced).

    A missing parent is made 0700. `sync=False` is for files rewritten every few seconds whose loss costs
    nothing (a status view): still atomic, only not forced to disk."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (a signal, a pipe-like file system)
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync:
        fsync_directory(path.parent)


def replace(source: Path, target: Path, *, sync: bool = True) -> None:
    """Rename `source` over `target` (same file system); with `sync`, the directory is fsynced so it stays.

    Several renames in one directory that must land together: `sync=False` on all but the last."""
    os.replace(source, target)
    if sync:
        fsync_directory(target.parent)
        if source.parent != target.parent:
            fsync_directory(source.parent)


def fsync_directory(directory: Path) -> None:
    """Make the names in `directory` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_directory(path: Path) -> Path:
    """A directory only this uid can enter: made 0700, or one of ours tightened to 0700.

    Refused when it is a symlink, not a directory, or someone else's: whoever owns it can read or swap what is
    kept there, so using it would be trusting them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    found = path.lstat()
    if not stat.S_ISDIR(found.st_mode):
        raise UnsafeDirectoryError(f"{path} is not a directory (a symlink?); refusing to keep secrets there")
    if found.st_uid != os.geteuid():
        raise UnsafeDirectoryError(f"{path} belongs to uid {found.st_uid}, not to this process; refusing to use it")
    if stat.S_IMODE(found.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path
