"""A throwaway cluster in one command: `python -m localpeers.cluster up --dir D` / `down --dir D`.

docs/quickstart.md needs a real API server that outlives one command, so that a reader can run kubectl, the
syncer and the webhook against it step by step. `up` starts a supervisor process in its own session which holds
etcd and kube-apiserver the way the tests do (localpeers/kube.py) and returns once /readyz answers 200, leaving
in D what a client needs: `kubeconfig` (admin), `admin.token`, `ca.crt`, `url`, and `cluster.pid` (the
supervisor, also the id of its process group). `down` ends that process group by the id in `cluster.pid`, which
stops both peers. Only the API server and its store run: pods are stored and stay Pending (no kubelet yet).
Development only, like the rest of localpeers/.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from edgetrust._internal.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Parser, fail
from edgetrust._internal.files import write_private, write_public
from localpeers.peers import peers_cache, pinned

#: kube-apiserver takes 10-30 s to turn ready on a loaded two-core machine; etcd a second
_READY_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0
_PROG = "localpeers.cluster"


def _pid_file(directory: Path) -> Path:
    return directory / "cluster.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(directory: Path) -> int | None:
    """The supervisor's pid, if it still runs: a stale pid file (or one naming another process since reused)
    is ignored, so `down` never signals a process group that is not the cluster's."""
    try:
        pid = int(_pid_file(directory).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    ours = b"localpeers.cluster" in cmdline and b"_supervise" in cmdline
    return pid if ours and _alive(pid) else None


def _missing_peers() -> list[str]:
    missing = []
    for name in ("etcd", "kube-apiserver"):
        _module, version, binary = pinned()[name]
        if not os.access(peers_cache() / f"{name}-{version}" / binary, os.X_OK):
            missing.append(name)
    return missing


def up(directory: Path) -> int:
    """Start the supervisor and return once the API server is ready (or say why it is not)."""
    if (pid := _running_pid(directory)) is not None:
        stop = f"python -m localpeers.cluster down --dir {directory}"
        return fail(
            _PROG, f"a cluster is already running from {directory} (pid {pid}); stop it with: {stop}", EXIT_REFUSED
        )
    if missing := _missing_peers():
        return fail(_PROG, f"{', '.join(missing)} not built: run hack/install-peers {' '.join(missing)}", EXIT_REFUSED)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ready = directory / "ready"
    ready.unlink(missing_ok=True)
    log = directory / "cluster.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "localpeers.cluster", "_supervise", "--dir", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` ends etcd and kube-apiserver with it
        )
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not ready.exists():
        if supervisor.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return fail(_PROG, f"the cluster did not start ({tail[0]}); see {log}", EXIT_REFUSED)
        if time.monotonic() > deadline:
            os.killpg(supervisor.pid, signal.SIGTERM)
            return fail(_PROG, f"the API server was not ready after {_READY_TIMEOUT_S:.0f}s; see {log}", EXIT_REFUSED)
        time.sleep(0.1)
    print(f"cluster ready at {(directory / 'url').read_text().strip()}")
    print(f"kubeconfig: {directory / 'kubeconfig'}")
    return EXIT_OK


def _supervise(directory: Path) -> int:
    """Hold etcd and kube-apiserver until SIGTERM; the context managers stop both on the way out."""
    from localpeers.kube import running_kube_apiserver
    from localpeers.tlsca import TestCA

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(EXIT_OK)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    write_public(_pid_file(directory), f"{os.getpid()}\n".encode())
    try:
        ca = TestCA(directory / "pki", name="edgetrust quickstart cluster CA")
        with running_kube_apiserver(directory / "apiserver", ca) as api:
            write_public(directory / "ca.crt", api.ca_file.read_bytes())
            write_private(directory / "admin.token", api.token.encode())
            write_public(directory / "url", f"{api.url}\n".encode())
            api.write_kubeconfig(directory / "kubeconfig")
            (directory / "ready").touch()
            print(f"ready at {api.url}", flush=True)
            while True:
                signal.pause()
    finally:
        (directory / "ready").unlink(missing_ok=True)
        _pid_file(directory).unlink(missing_ok=True)


def down(directory: Path) -> int:
    """Stop the cluster started from `directory`: its process group, by the id in cluster.pid."""
    pid = _running_pid(directory)
    if pid is None:
        print(f"no cluster running from {directory}")
        return EXIT_OK
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    _pid_file(directory).unlink(missing_ok=True)
    print(f"cluster stopped (pid {pid})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=_PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("up", "start etcd and kube-apiserver; return once the API server is ready"),
        ("down", "stop the cluster started from --dir"),
        ("_supervise", argparse.SUPPRESS),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--dir", type=Path, required=True, help="where the cluster keeps its files")
    args = parser.parse_args(argv)
    directory = Path(args.dir).resolve()
    if args.command == "up":
        return up(directory)
    if args.command == "down":
        return down(directory)
    if args.command == "_supervise":
        return _supervise(directory)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
