"""How edgetrust's HTTPS servers (trustd, the admission webhook) run uvicorn so that idle connections cannot
take them down (slowloris).

uvicorn bounds none of what a slow client holds: the TLS handshake waits asyncio's 60 s, a request head may
trickle in for ever (its keep-alive timer is cancelled by the first byte), and connections are only limited
by the fd limit, past which `accept` fails and the server stops answering, `/healthz` included. Long polls
(a policy bundle's `?wait=`) legitimately hold a connection for many seconds, so a plain idle timeout on
every connection would cut them. Here, per connection:

- the TLS handshake must finish within `handshake_timeout_s` (set on the listening server);
- a request head must be complete `header_timeout_s` after the connection was made or the request began,
  and an idle keep-alive connection that starts a request late gets no more than that after its keep-alive;
- a request body must be complete `body_timeout_s` after its head (not the response: long polls are held
  by the app, with their head and body long received);
- at most `max_connections` connections are open (capped below the fd limit, which is raised to its hard
  limit). Past `max_waiting_per_source` connections of one client address that have not sent a whole
  request yet, the oldest of those is closed to make room if it has had `stale_after_s` to send its head; at
  the cap, the oldest connection still waiting for its head from anyone, then the oldest kept-alive idle
  one. Connections inside a request (a long poll) are never evicted; a new one is refused at once (503
  too_many_connections) only when no connection can be evicted.

Both `trustd serve` and `edgetrust-admission serve` build their configuration with `server_config()` and run
it through `run()`, which also runs the caller's periodic upkeep tasks (e.g. trustd's challenge purge) while the
server serves, each on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("edgetrust.serving")

_REFUSED_BODY = b'{"error": "too_many_connections", "reason": "the server is at its connection cap"}'
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: 1\r\ncontent-length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY
)
#: fds kept for everything that is not a client connection (store, logs, outgoing calls)
FD_RESERVE = 128


@dataclass(frozen=True, slots=True)
class ServingLimits:
    handshake_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_s: float = 5.0
    #: one replica holds 20,000 long-polling clusters, one connection each, with room for their webhooks' reports
    max_connections: int = 32768
    max_waiting_per_source: int = 256
    #: a connection without a request head this long after its handshake may be evicted to make room
    stale_after_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Periodic:
    """A task run every `every_s` seconds while the server serves, on a worker thread (upkeep such as a purge
    of the store must not hold up the event loop); failures are logged, not fatal."""

    every_s: float
    run: Callable[[], None]


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft fd limit towards `wanted`; returns the soft limit in force. Up to the hard limit, or past it
    where the process may raise that too (CAP_SYS_RESOURCE, e.g. root in a container whose hard limit is
    20,000: one replica holding 20,000 clusters needs a few fds more than that)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # unprivileged: EPERM, and the hard limit stands
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return wanted if soft == resource.RLIM_INFINITY else int(soft)


class ConnectionGuard:
    """The deadlines and the connection cap, shared by every connection of one server.

    Waiting connections are of two kinds: fresh ones, which have not sent a whole request yet (a slowloris
    holds these), and kept-alive ones between requests (a fleet of clusters behind one NAT holds many of
    these between long polls, and closing them would cost each a TLS handshake). Only fresh ones count
    against `max_waiting_per_source`; at `max_connections`, the oldest fresh one goes first, then the oldest
    kept-alive one.
    """

    def __init__(self, limits: ServingLimits, max_connections: int) -> None:
        self.limits = limits
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0
        self.evicted = 0
        #: oldest first (dicts keep insertion order)
        self._fresh: dict[GuardedProtocol, None] = {}
        self._kept_alive: dict[GuardedProtocol, None] = {}
        self._fresh_by_source: dict[str, dict[GuardedProtocol, None]] = {}

    def admit(self, conn: GuardedProtocol) -> bool:
        now = conn.loop.time()
        conn.born = now
        # at the cap a slot must be made whatever the age of the oldest waiting connection; below it, only a
        # source's own stale connections make room (a storm of young ones from one address is let in)
        if self.open >= self.max_connections and not (
            self._evict_oldest(self._fresh) or self._evict_oldest(self._kept_alive)
        ):
            self.refused += 1
            return False
        self.open += 1
        fresh = self._fresh_by_source.get(conn.source, {})
        if len(fresh) >= self.limits.max_waiting_per_source:
            self._evict_stale(fresh, now)
        self._fresh[conn] = None
        self._fresh_by_source.setdefault(conn.source, {})[conn] = None
        return True

    def kept_alive(self, conn: GuardedProtocol) -> None:
        self._kept_alive[conn] = None

    def got_head(self, conn: GuardedProtocol) -> None:
        self._kept_alive.pop(conn, None)
        if conn in self._fresh:
            del self._fresh[conn]
            by_source = self._fresh_by_source[conn.source]
            del by_source[conn]
            if not by_source:
                del self._fresh_by_source[conn.source]

    def release(self, conn: GuardedProtocol) -> None:
        self.got_head(conn)
        self.open -= 1

    def _evict_oldest(self, waiting: dict[GuardedProtocol, None]) -> bool:
        for oldest in waiting:
            self._evict(oldest)
            return True
        return False

    def _evict_stale(self, fresh: dict[GuardedProtocol, None], now: float) -> bool:
        """Close the oldest connection still without a request head, if it has had `stale_after_s` to send one.

        A client sends its head right after the TLS handshake: one that has not after a moment is holding the
        slot (slowloris). A younger one is a client caught in a reconnect storm (a fleet behind one NAT, or
        10,000 syncers on loopback): evicting it would send it through another handshake and feed the storm."""
        for oldest in fresh:
            if now - oldest.born < self.limits.stale_after_s:
                return False
            self._evict(oldest)
            return True
        return False

    def _evict(self, conn: GuardedProtocol) -> None:
        self.evicted += 1
        self.got_head(conn)
        conn.close_now()  # its connection_lost releases it


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and the cap of its server's `ConnectionGuard`."""

    guard: ConnectionGuard
    source = ""
    born = 0.0
    _admitted = False
    _kept_alive = False
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self.guard.admit(self):
            transport.write(_REFUSED)  # every connection is inside a request: refuse now rather than queue
            transport.close()
            return
        self._admitted = True
        self._set_deadline(self.guard.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._admitted:
            self._admitted = False
            self.guard.release(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None or self._kept_alive:  # a request begins on a kept-alive connection
            self._kept_alive = False
            self._set_deadline(self.guard.limits.header_timeout_s)

    def on_headers_complete(self) -> None:
        self.guard.got_head(self)
        self._set_deadline(self.guard.limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            # uvicorn closes it after the keep-alive if nothing comes; a request begun by then gets the header
            # deadline (on_message_begin), and this backstops both
            self._kept_alive = True
            self.guard.kept_alive(self)
            self._set_deadline(self.guard.limits.keep_alive_s + self.guard.limits.header_timeout_s)

    def close_now(self) -> None:
        self._cancel_deadline()
        if not self.transport.is_closing():
            self.transport.abort()

    def _set_deadline(self, timeout_s: float) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(timeout_s, self.close_now)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def guarded_protocol(
    base: type[HttpToolsProtocol], limits: ServingLimits, max_connections: int
) -> type[GuardedProtocol]:
    """A protocol class for one server: `base` (e.g. trustd's peer-certificate protocol) under a new guard."""
    guard = ConnectionGuard(limits, max_connections)
    if issubclass(base, GuardedProtocol):
        raise TypeError("the protocol is guarded already")
    bases = (GuardedProtocol,) if base is HttpToolsProtocol else (GuardedProtocol, base)
    return cast(type[GuardedProtocol], type(f"Guarded{base.__name__}", bases, {"guard": guard}))


def _loop_factory(handshake_timeout_s: float) -> Callable[[], asyncio.AbstractEventLoop]:
    """An event loop whose TLS servers time out handshakes (uvicorn passes no ssl_handshake_timeout)."""
    try:
        import uvloop

        base: type[asyncio.AbstractEventLoop] = uvloop.Loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; the fallback is asyncio's own loop
        base = asyncio.SelectorEventLoop

    class HandshakeTimeoutLoop(base):  # type: ignore[valid-type,misc]
        async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.AbstractServer:
            context = kwargs.get("ssl")
            if context is not None:
                kwargs.setdefault("ssl_handshake_timeout", handshake_timeout_s)
                if isinstance(context, ssl.SSLContext):
                    # no TLS 1.3 session tickets: no client of the plane resumes (aiohttp and httpx keep the one
                    # connection instead), and OpenSSL's two tickets per handshake were a fifth of its server
                    # CPU and 1.2 KB on the wire (measured: 3.0 -> 2.4 ms, 3,770 -> 2,556 bytes per handshake)
                    context.num_tickets = 0
            return cast(asyncio.AbstractServer, await super().create_server(*args, **kwargs))

    return HandshakeTimeoutLoop


async def _periodically(task: Periodic) -> None:
    while True:
        await asyncio.sleep(task.every_s)
        try:
            await asyncio.to_thread(task.run)
        except Exception:
            log.exception("periodic task %s failed", getattr(task.run, "__qualname__", task.run))


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    certfile: str,
    keyfile: str,
    limits: ServingLimits,
    protocol: type[HttpToolsProtocol] = HttpToolsProtocol,
    client_cert_reqs: ssl.VerifyMode = ssl.CERT_NONE,
    client_ca_certs: str | None = None,
    lifespan: Literal["auto", "on", "off"] = "auto",
) -> uvicorn.Config:
    """uvicorn's configuration with the limits above: what `run()` serves, and what tests that serve the app
    in a thread of their own use, so the connection guard they exercise is the production one."""
    soft = raise_fd_limit(limits.max_connections + FD_RESERVE)
    max_connections = max(1, min(limits.max_connections, soft - FD_RESERVE))
    if max_connections < limits.max_connections:
        log.warning("fd limit %d: at most %d connections (ulimit -n to raise it)", soft, max_connections)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_cert_reqs=client_cert_reqs,
        ssl_ca_certs=client_ca_certs,
        http=guarded_protocol(protocol, limits, max_connections),
        log_config=None,  # uvicorn's loggers propagate to the daemon's one set-up (edgetrust._internal.logs)
        log_level="warning",
        access_log=False,
        timeout_keep_alive=int(limits.keep_alive_s),
        lifespan=lifespan,
    )


def check_free(host: str, port: int, *, flag: str = "--listen") -> None:
    """Refuse a listen address that is taken before anything starts, as a usage error naming `flag` (uvicorn's
    own bind failure is a log line and exit code 3, which on our command lines means "unreachable")."""
    from edgetrust._internal.cli import UsageError

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UsageError(
            f"{flag} {host}:{port}: {exc.strerror or exc} (another process listening there? give another {flag})"
        ) from exc


def run(
    config: uvicorn.Config,
    *,
    limits: ServingLimits,
    periodic: Sequence[Periodic] = (),
    sockets: Sequence[socket.socket] | None = None,
) -> bool:
    """Serve `config` (from `server_config`) until SIGINT/SIGTERM, on a loop that bounds TLS handshakes; on
    `sockets` already listening (a worker of several, trustd.server.workers) instead of binding the config's
    host and port.

    Returns whether the server started (False: the port was taken or the app's lifespan failed)."""
    server = uvicorn.Server(config)

    async def main() -> None:
        tasks = [asyncio.create_task(_periodically(task)) for task in periodic]
        try:
            await server.serve(sockets=list(sockets) if sockets is not None else None)
        finally:
            for task in tasks:
                task.cancel()

    # uvicorn re-raises SIGTERM once it has shut down; with the default handler that kills the process before
    # the caller's `finally` (trustd closing its store, so SQLite checkpoints its WAL): exit through Python
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(limits.handshake_timeout_s)) as runner:
            runner.run(main())
    finally:
        signal.signal(signal.SIGTERM, previous)
    return server.started


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
