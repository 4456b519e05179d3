"""Who is calling: the kernel's answer (SO_PEERCRED) for each connection to the Workload API socket.

gRPC for Python does not expose a connection's socket, so the socket workloads connect to is ours: each
accepted connection is relayed to the gRPC server, and the relay's own connection is mapped to the caller's
pid, uid and gid. The gRPC handler looks its peer up in that map.

Nothing but the relay may reach the gRPC server, and nothing but the relay may look like it:
- the gRPC server listens on a unix socket in a private directory (0700, made by `mkdtemp`, so its name is
  unguessable and no other uid can traverse it): no TCP port, so no one can connect from another loopback
  address with a relay's port, and no other uid can connect at all;
- each relay connection is bound to a fresh name in that directory before it connects (and the name is
  unlinked at once: the socket keeps it as its address). gRPC reports that name as the peer, and only the
  agent's uid can bind a name there, so a peer name in the map is one of the relay's own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trustd.errors import TrustdError

_UCRED = struct.Struct("3i")
#: sun_path holds 108 bytes, the terminating NUL included
_MAX_SOCKET_PATH = 107


class AgentSocketError(TrustdError):
    code = "agent_socket"


@dataclass(frozen=True, slots=True)
class Caller:
    pid: int
    uid: int
    gid: int
    #: the process's cgroup when it connected (read at once, on Kubernetes nodes): a pid found in another cgroup
    #: when it asks (the caller exited and its pid went to another pod's process) names no pod
    cgroup: str | None = None

    @property
    def selectors(self) -> frozenset[str]:
        return frozenset({f"unix:uid:{self.uid}", f"unix:gid:{self.gid}", f"unix:pid:{self.pid}"})


class PeerCredFront:
    """The public Workload API socket, relaying each connection to the private gRPC socket.

    `open()` makes the private directory (the gRPC server binds `backend_address` in it), `start()` listens
    on the public socket, `close()` stops listening and removes both. A `private_parent` must be the agent's
    own (0700): the state directory.
    """

    def __init__(self, path: Path, *, private_parent: Path | None = None, proc_root: Path | None = None) -> None:
        self.path = path
        self._private_parent = private_parent
        self._proc_root = proc_root
        self._private: Path | None = None
        self._names = itertools.count()
        #: gRPC peer string ("unix:<relay connection's name>") -> the caller it relays
        self.callers: dict[str, Caller] = {}
        self._server: asyncio.Server | None = None

    @property
    def private_dir(self) -> Path:
        if self._private is None:
            raise AgentSocketError("the Workload API front is not open")
        return self._private

    @property
    def backend(self) -> Path:
        """The gRPC server's socket: reachable by the agent's uid only."""
        return self.private_dir / "grpc.sock"

    @property
    def backend_address(self) -> str:
        return f"unix:{self.backend}"

    def open(self) -> None:
        """Make the private directory: in `private_parent` (the agent's state directory), or in the system's
        temporary directory when that is too deep for a socket path (sun_path holds 107 bytes)."""
        for parent in self._private_parents():
            if len(os.fsencode(f"{parent}/edgetrust-agent-xxxxxxxx/r{2**63}")) <= _MAX_SOCKET_PATH:
                _refuse_shared_parent(parent)
                _remove_dead(parent)
                self._private = Path(tempfile.mkdtemp(prefix="edgetrust-agent-", dir=parent))  # 0700, unguessable
                return
        first = self._private_parent or "the temporary directory"
        raise AgentSocketError(f"{first} is too deep for a unix socket path: choose a shorter directory")

    def _private_parents(self) -> Iterator[Path]:
        """The state directory, then the system's temporary directory, looked for only when needed: in a
        container with a read-only root filesystem there is none, and the state directory is enough."""
        if self._private_parent is not None:
            yield self._private_parent
        try:
            yield Path(tempfile.gettempdir())
        except FileNotFoundError as exc:  # no writable temporary directory at all
            raise AgentSocketError(f"no writable temporary directory for the agent's private socket: {exc}") from exc

    async def start(self) -> None:
        """Listen on the public socket (the gRPC server must be serving `backend_address` already)."""
        self.private_dir  # noqa: B018 - refuses unless open() made the private directory
        await _claim(self.path)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        # any local process may ask; what it gets is decided by its uid/gid against the entries
        os.chmod(self.path, 0o777)  # noqa: S103 - a socket: connecting is the permission checked, by uid

    async def close(self) -> None:
        if self._server is not None:  # only a socket this front serves is removed, never a live agent's
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._remove_private()

    def _remove_private(self) -> None:
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        cgroup = None
        if self._proc_root is not None:
            try:
                cgroup = (self._proc_root / str(pid) / "cgroup").read_text()
            except OSError:
                cgroup = ""  # gone already, or not ours to read: in no pod
        try:
            name, up_reader, up_writer = await self._connect_backend()
        except OSError:
            writer.close()
            return
        self.callers[name] = Caller(pid, uid, gid, cgroup)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.callers.pop(name, None)
            for stream in (writer, up_writer):
                stream.close()

    async def _connect_backend(self) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the gRPC server under a name no one else can hold: its peer string is the key."""
        name = self.private_dir / f"r{next(self._names)}"
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.bind(str(name))
            name.unlink()  # the socket keeps the name as its address; nothing can connect to or take it
            upstream.setblocking(False)
            await asyncio.get_running_loop().sock_connect(upstream, str(self.backend))
            up_reader, up_writer = await asyncio.open_unix_connection(sock=upstream)
        except BaseException:
            upstream.close()
            raise
        return f"unix:{name}", up_reader, up_writer


def _remove_dead(parent: Path) -> None:
    """Private directories left by agents that were killed: their gRPC socket no longer answers, and they are
    older than an agent takes to start (one starting now has not bound its socket yet)."""
    for found in parent.glob("edgetrust-agent-*"):
        info = found.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or time.time() - info.st_mtime < 60:
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(found / "grpc.sock"))
        except OSError:
            shutil.rmtree(found, ignore_errors=True)
        finally:
            probe.close()


def _refuse_shared_parent(parent: Path) -> None:
    """Another uid able to rename entries in the parent could swap our private directory for its own."""
    try:
        mode = parent.stat().st_mode
    except OSError as exc:
        raise AgentSocketError(f"cannot use {parent} for the agent's private socket: {exc}") from exc
    if mode & (stat.S_IWOTH | stat.S_IWGRP) and not mode & stat.S_ISVTX:
        raise AgentSocketError(f"{parent} is writable by others without the sticky bit: not private enough")


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            sink.write_eof()


async def _claim(path: Path) -> None:
    """Take over a socket left by a dead agent; refuse to steal one a live agent still serves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AgentSocketError(f"{path} exists and is not a socket; refusing to replace it")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout=1)
    except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
        path.unlink()  # stale: its agent is gone
        return
    writer.close()
    raise AgentSocketError(f"another agent is serving {path}; stop it first")
