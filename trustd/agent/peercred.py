"""Who is calling: the kernel's answer (SO_PEERCRED) for each connection to the Workload API socket.

gRPC for Python does not expose a connection's socket, so the socket workloads connect to is ours: each
accepted connection is relayed to the gRPC server on a loopback port, and the relay's source port is mapped to
the caller's pid, uid and gid. The gRPC handler looks its peer's port up in that map. A process that connects to
the loopback port directly finds no mapping and is refused: the ports in the map are held by the relay's own
sockets, so no one else can connect from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from trustd.errors import TrustdError

_UCRED = struct.Struct("3i")


class AgentSocketError(TrustdError):
    code = "agent_socket"


@dataclass(frozen=True, slots=True)
class Caller:
    pid: int
    uid: int
    gid: int

    @property
    def selectors(self) -> frozenset[str]:
        return frozenset({f"unix:uid:{self.uid}", f"unix:gid:{self.gid}", f"unix:pid:{self.pid}"})


class PeerCredFront:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._backend = 0
        self.callers: dict[int, Caller] = {}
        self._server: asyncio.Server | None = None

    async def start(self, backend_port: int) -> None:
        """Relay to the gRPC server at 127.0.0.1:backend_port (known once it is bound)."""
        self._backend = backend_port
        await _claim(self.path)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        # any local process may ask; what it gets is decided by its uid/gid against the entries
        os.chmod(self.path, 0o777)  # noqa: S103 - a socket: connecting is the permission checked, by uid

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._backend)
        except OSError:
            writer.close()
            return
        port = int(up_writer.get_extra_info("sockname")[1])
        self.callers[port] = Caller(pid, uid, gid)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.callers.pop(port, None)
            for stream in (writer, up_writer):
                stream.close()


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
