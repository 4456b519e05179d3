"""A real PostgreSQL (Debian's server) on 127.0.0.1, TLS required and password authentication, for the store
tests and the two-replica test. One server per test session; each test gets its own database.

On the real cluster (tests/integration/chart_real), hub pods reach it at the node's own address: `host` is then
that address (never 0.0.0.0: nothing of ours listens on eth0) and `clients` the pod network, the only sources
pg_hba admits besides the host itself.

PostgreSQL refuses to run as root, so its data directory belongs to the `postgres` user the Debian package
creates, and the server is started through `runuser`.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from localpeers.hub import free_port
from localpeers.tlsca import TestCA

INSTALL = "hack/install-deps (apt-get install postgresql)"


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([path for path in [shutil.which(name)] if path])
    if not found or not found[-1]:
        pytest.fail(f"PostgreSQL's {name} is missing: run {INSTALL}", pytrace=False)
    return str(found[-1])


@dataclass
class PostgresServer:
    port: int
    password: str
    ca_file: Path
    data_dir: Path
    log: Path
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres", *, ca_file: str | Path | None = None) -> str:
        """The URL of `database`; `ca_file` is where the client finds the CA (a pod's mount), default this host's."""
        return (
            f"postgresql://edgetrust:{self.password}@{self.host}:{self.port}/{database}"
            f"?sslmode=verify-full&sslrootcert={ca_file or self.ca_file}"
        )

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=False)

    def start(self) -> None:
        done = self._as_postgres(
            _binary("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t", "30", "start"
        )
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr}\n{self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(_binary("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """A real restart: every connection is cut, the server comes back on the same port."""
        self.stop("fast")
        self.start()

    def new_database(self) -> str:
        return self.url(self.new_database_name())

    def new_database_name(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name


@contextmanager
def running_postgres(ca: TestCA, *, host: str = "127.0.0.1", clients: tuple[str, ...] = ()) -> Iterator[PostgresServer]:
    """The server on `host` (a loopback or node address), admitting TLS clients from itself and `clients` (CIDRs)."""
    initdb = _binary("initdb")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.fail("the PostgreSQL tests start the server as the postgres user: they need root and runuser")
    base = Path(tempfile.mkdtemp(prefix="edgetrust-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    password = secrets.token_urlsafe(18)
    (base / "pw").write_text(password)
    shutil.chown(base / "pw", "postgres", "postgres")
    server = ca.issue("postgres", hosts=tuple(dict.fromkeys((host, "127.0.0.1", "localhost"))))
    for source, target in ((server.cert, "server.crt"), (server.key, "server.key"), (ca.ca_file, "ca.crt")):
        shutil.copy(source, base / target)
        shutil.chown(base / target, "postgres", "postgres")
        (base / target).chmod(0o600)
    port = free_port()
    pg = PostgresServer(port, password, ca.ca_file, data, base / "postgres.log", host=host)
    done = pg._as_postgres(
        initdb, "-D", str(data), "-U", "edgetrust", "--pwfile", str(base / "pw"), "-A", "scram-sha-256", "-E", "UTF8"
    )
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr}")
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\nlisten_addresses = '{host}'\nport = {port}\nunix_socket_directories = ''\n"
            f"ssl = on\nssl_cert_file = '{base / 'server.crt'}'\nssl_key_file = '{base / 'server.key'}'\n"
            "fsync = off\nmax_connections = 200\n"
        )
    # TLS only: no plain-text host lines
    sources = (f"{host}/32", *clients)
    (data / "pg_hba.conf").write_text("".join(f"hostssl all all {cidr} scram-sha-256\n" for cidr in sources))
    shutil.chown(data / "pg_hba.conf", "postgres", "postgres")
    (base / "postgres.log").touch()
    shutil.chown(base / "postgres.log", "postgres", "postgres")
    pg.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import psycopg

            psycopg.connect(pg.url(), connect_timeout=2).close()
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    try:
        yield pg
    finally:
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
