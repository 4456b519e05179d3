"""Secrets on disk: written 0600 from their first byte, fsynced, then moved into place atomically.

A crash never leaves a half-written key, and there is no moment when the file exists with looser permissions.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from trustd.errors import TrustdError


class PrivateFileError(TrustdError):
    code = "private_file"


def write_private(path: Path, data: bytes, *, sync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


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
        raise PrivateFileError(f"{path} is not a directory (a symlink?); refusing to keep secrets there")
    if found.st_uid != os.geteuid():
        raise PrivateFileError(f"{path} belongs to uid {found.st_uid}, not to this process; refusing to use it")
    if stat.S_IMODE(found.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path
