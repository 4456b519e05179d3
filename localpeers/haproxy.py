"""A real load balancer (Debian's HAProxy) on loopback in front of N trustd replicas, as a cluster's Service or an
edge load balancer puts one: TCP with TLS passed through (the replicas terminate TLS and see the client's SVID),
round robin, so consecutive connections land on different replicas, and health checks on each replica's
/healthz over TLS, verified against the trust bundle, so a replica killed is taken out of the rotation. A connection
that finds its replica gone is sent to another one (`redispatch`).

`counts()` reads the stats socket: how many connections each replica was given, which is how a test shows that
its requests really landed on other replicas.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from localpeers.hub import free_port
from localpeers.processes import running

INSTALL = "apt-get install -y haproxy (or run hack/install-deps)"


class HAProxyError(RuntimeError):
    """HAProxy is missing, or its stats socket did not answer."""


@dataclass(frozen=True)
class Backend:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class HAProxy:
    host: str
    port: int
    stats_socket: Path
    pid: int

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _stat(self) -> list[dict[str, str]]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().strip().splitlines()
        if not lines or not lines[0].startswith("# "):
            raise HAProxyError(f"the stats socket answered {data[:200]!r}")
        header = lines[0][2:].split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def counts(self) -> dict[str, int]:
        """Connections given to each replica so far (health checks not counted)."""
        return {
            row["svname"]: int(row["stot"] or 0)
            for row in self._stat()
            if row["pxname"] == "trustd" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def current(self) -> dict[str, int]:
        """Connections each replica holds now (a long-polling cluster holds one)."""
        return {
            row["svname"]: int(row["scur"] or 0)
            for row in self._stat()
            if row["pxname"] == "trustd" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def up(self) -> set[str]:
        """The replicas whose health check passes now."""
        return {
            row["svname"]
            for row in self._stat()
            if row["pxname"] == "trustd" and row["svname"] not in ("FRONTEND", "BACKEND") and row["status"] == "UP"
        }


#: health checks (default-server options, the backend's check timeout): quick for tests, so a replica killed is out
#: of the rotation within about 0.6 s; patient for a loaded machine (a bench's thousands of agents on the same
#: cores), where a replica that is only slow to be scheduled must not be taken out and its new clients refused (a
#: check's connect and TLS handshake must still end within `inter`, its answer within `timeout check`; three
#: misses in a row take a replica out)
QUICK_CHECKS = ("inter 300ms fall 2 rise 1", "")
PATIENT_CHECKS = ("inter 1s fall 3 rise 1", "    timeout check 2s\n")


def config(
    backends: Sequence[Backend],
    *,
    port: int,
    ca_file: Path,
    stats_socket: Path,
    check_name: str,
    maxconn: int = 2000,
    checks: tuple[str, str] = QUICK_CHECKS,
) -> str:
    servers = "\n".join(
        f"    server {b.name} {b.host}:{b.port} check check-ssl verify required ca-file {ca_file} "
        f"check-sni {check_name} verifyhost {check_name}"
        for b in backends
    )
    return f"""global
    stats socket {stats_socket} mode 600 level admin
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch

frontend hub
    bind 127.0.0.1:{port}
    default_backend trustd

backend trustd
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
{checks[1]}    default-server {checks[0]}
{servers}
"""


@contextmanager
def running_haproxy(
    workdir: Path,
    backends: Sequence[Backend],
    *,
    ca_file: Path,
    check_name: str = "localhost",
    maxconn: int = 2000,
    checks: tuple[str, str] = QUICK_CHECKS,
) -> Iterator[HAProxy]:
    """HAProxy on a free loopback port in front of `backends`; ready once every backend's health check passes.
    `maxconn` bounds the client connections it holds at once (a fleet of long polls holds one each; HAProxy raises
    its own file limit to match, which needs root)."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        raise HAProxyError(f"HAProxy is not installed: {INSTALL}")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stats = workdir / "haproxy.sock"
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        config(
            backends,
            port=port,
            ca_file=ca_file,
            stats_socket=stats,
            check_name=check_name,
            maxconn=maxconn,
            checks=checks,
        )
    )
    names = {b.name for b in backends}

    def ready() -> bool:
        return stats.exists() and HAProxy("127.0.0.1", port, stats, 0).up() == names

    with running([binary, "-db", "-f", str(cfg)], ready=ready, log=workdir / "haproxy.log") as process:
        yield HAProxy("127.0.0.1", port, stats, process.pid)
