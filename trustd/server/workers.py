"""`trustd serve --workers N`: N processes serving one listen port, so signing and TLS use every core given.

One Python process signs, handshakes and parses on one core (the GIL), however many cores the hub has. Each
worker here is a whole hub, as a replica is: it loads the trust material itself (with a PKCS#11 token it logs in
to the token itself: a token session does not survive a fork, and PKCS#11 logs in per process), opens its own
store pool, runs its own watchers, and its limits (connections, requests in flight, long polls) are its own.
What workers share is what replicas share, the store: a publish or a revocation through one worker wakes the
long polls held by the others through the same PostgreSQL LISTEN/NOTIFY (settings refuse more than one worker
on SQLite, which tells no other process of a write).

How:
- The supervisor (the process `trustd serve` started) binds N listening sockets on the listen address with
  SO_REUSEPORT before any worker starts, so a taken port is refused once, here, as a usage error. The kernel
  spreads new connections over the N sockets by a hash of their addresses. One socket shared by all (pre-fork)
  spread them badly: every worker wakes for a connection and the first takes all that are queued, so a burst
  of node agents connecting together lands on one worker.
- Workers are started with multiprocessing's spawn (a fresh interpreter, given only its socket, its index and
  the settings), never fork: a forked child would inherit the supervisor's threads and locks, and no token
  session or store connection may cross a fork anyway. The supervisor opens neither.
- Fail closed: the supervisor does not restart a worker. When one exits (a crash, the OOM killer, a failed
  start such as a wrong PIN), it stops the others and exits with that worker's code (1 if it was killed), so a
  hub is whole or not running, and the orchestrator (a Deployment, systemd) restarts it and counts restarts.
  Restarting here would hide a crash loop behind a hub that looks up.
- A worker whose supervisor is gone (killed with SIGKILL) stops itself the same way, so no orphan serves on.
- SIGTERM or SIGINT: every worker gets SIGTERM (uvicorn's graceful shutdown; each closes its store and token),
  is waited for up to STOP_S, then killed; the supervisor exits as one process would (128 + the signal).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from attestation.errors import AttestationError
from edgetrust._internal import logs, serving
from edgetrust._internal.cli import UsageError, one_line
from trustd.errors import TrustdError
from trustd.server.settings import TrustdSettings

log = logging.getLogger(__name__)

#: how long a worker has to finish its requests after SIGTERM before it is killed
STOP_S = 30.0
#: a worker's exit code when its hub refused to start (as `trustd serve` exits: 1, refused)
REFUSED = 1


class _SignalledError(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum: int, _frame: FrameType | None) -> None:
    raise _SignalledError(signum)


def listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets listening on host:port with SO_REUSEPORT (port 0: the one the first is given)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(2048)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


def supervise(settings: TrustdSettings) -> None:
    """Run `settings.workers` workers on the listen address until a signal or a worker's exit; raises
    SystemExit with the hub's exit code."""
    serving.check_free(settings.listen_host, settings.listen_port)  # nobody else, SO_REUSEPORT or not
    try:
        sockets = listeners(settings.listen_host, settings.listen_port, settings.workers)
    except OSError as exc:  # taken between the check and the bind
        raise UsageError(f"--listen {settings.listen_host}:{settings.listen_port}: {exc.strerror or exc}") from exc
    port = sockets[0].getsockname()[1]
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    previous = {signum: signal.signal(signum, _raise_signalled) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index, sock in enumerate(sockets, start=1):
            worker = context.Process(
                target=work,
                args=(settings, sock, index, logs.current()),
                name=f"trustd-worker-{index}",
            )
            worker.start()
            workers.append(worker)
        for sock in sockets:  # each worker has its own copy now; one left open here would take connections
            sock.close()
        log.info(
            "trustd serving trust domain %s on https://%s:%d with %d workers (pids %s)",
            settings.trust_domain,
            settings.listen_host,
            port,
            len(workers),
            ", ".join(str(w.pid) for w in workers),
        )
        code = _until_one_exits(workers)
    except _SignalledError as signalled:
        log.info("trustd: %s, stopping %d workers", signal.Signals(signalled.signum).name, len(workers))
        code = 128 + signalled.signum
    finally:
        for sock in sockets:
            sock.close()
        _stop(workers)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    raise SystemExit(code)


def _until_one_exits(workers: list[BaseProcess]) -> int:
    ready = multiprocessing.connection.wait([worker.sentinel for worker in workers])
    gone = next(worker for worker in workers if worker.sentinel in ready)
    gone.join()  # its sentinel closes as it dies, a moment before it can be reaped: exitcode may still be None
    code = gone.exitcode or 0
    log.error(
        "trustd: %s (pid %s) exited with %s: stopping the hub (a hub serves whole or not at all)",
        gone.name,
        gone.pid,
        f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}",
    )
    return code if code > 0 else REFUSED


def _stop(workers: list[BaseProcess]) -> None:
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.error("trustd: %s (pid %s) did not stop within %.0f s: killed", worker.name, worker.pid, STOP_S)
            worker.kill()
            worker.join()


def _stop_with_supervisor() -> None:
    """SIGTERM to this worker when its supervisor is gone, even by SIGKILL: no orphan keeps serving the port."""
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - a worker is always started by supervise()
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def work(settings: TrustdSettings, sock: socket.socket, index: int, log_setup: tuple[str, bool]) -> None:
    """One worker (in its own process): its hub, built as `trustd serve` builds one, served on `sock`."""
    from trustd.server.hub import build_hub, run_hub  # hub.py imports this module to dispatch

    log_format, verbose = log_setup
    logs.configure(log_format, verbose=verbose)
    _stop_with_supervisor()
    try:
        hub = build_hub(settings, worker=index)
    except (TrustdError, AttestationError) as exc:
        logs.fail("trustd", one_line(f"worker {index}: {exc.diagnostics()}"))
        sys.exit(REFUSED)
    log.info("trustd worker %d of %d serving (pid %d)", index, settings.workers, os.getpid())
    run_hub(hub, sockets=[sock])
