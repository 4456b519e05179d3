"""Real SPIRE (server and agent, v1.13.3, built by hack/install-peers) on loopback, for side-by-side benchmarks and
interop tests. The server keeps its datastore in PostgreSQL (our test server): the pinned build is pure Go
(CGO off), and SPIRE's SQLite dialect needs cgo. The agent attests with a join token and its workloads by unix
uid, as SPIRE deployments on plain hosts do.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from localpeers.hub import free_port
from localpeers.peers import peer
from localpeers.postgres import PostgresServer
from localpeers.processes import running


@dataclass(frozen=True)
class SpireServer:
    trust_domain: str
    socket: Path
    port: int
    bundle_port: int | None

    def cli(self, *argv: str) -> str:
        done = subprocess.run(
            [str(peer("spire-server")), *argv, "-socketPath", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"spire-server {' '.join(argv[:2])} failed: {done.stdout}{done.stderr}")
        return done.stdout


def _pg_dsn(url: str) -> str:
    parsed = urlparse(url)
    query = dict(part.split("=", 1) for part in parsed.query.split("&") if part)
    return (
        f"dbname={parsed.path.lstrip('/')} user={parsed.username} password={parsed.password} host={parsed.hostname} "
        f"port={parsed.port} sslmode={query.get('sslmode', 'verify-full')} sslrootcert={query.get('sslrootcert', '')}"
    )


@contextmanager
def running_spire_server(
    workdir: Path,
    postgres: PostgresServer,
    *,
    trust_domain: str = "spire.example",
    bundle_endpoint: bool = False,
    federates_with: str = "",
) -> Iterator[SpireServer]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    bundle_port = free_port() if bundle_endpoint else None
    socket = workdir / "server.sock"
    federation = ""
    if bundle_port is not None or federates_with:
        federation = "  federation {\n"
        if bundle_port is not None:
            federation += f'    bundle_endpoint {{\n      address = "127.0.0.1"\n      port = {bundle_port}\n    }}\n'
        federation += federates_with + "  }\n"
    config = f"""
server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{socket}"
  trust_domain = "{trust_domain}"
  data_dir = "{workdir / "data"}"
  log_level = "WARN"
  ca_key_type = "ec-p256"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
{federation}}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "postgres"
      connection_string = "{_pg_dsn(postgres.new_database())}"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
}}
"""
    (workdir / "server.conf").write_text(config)
    server = SpireServer(trust_domain, socket, port, bundle_port)

    def healthy() -> bool:
        done = subprocess.run(
            [str(peer("spire-server")), "healthcheck", "-socketPath", str(socket)], capture_output=True, check=False
        )
        return done.returncode == 0

    argv = [str(peer("spire-server")), "run", "-config", str(workdir / "server.conf")]
    with running(argv, ready=healthy, log=workdir / "server.log", timeout_s=60):
        yield server


@dataclass(frozen=True)
class SpireAgent:
    socket: Path
    spiffe_id: str


@contextmanager
def running_spire_agent(workdir: Path, server: SpireServer, *, node: str = "node-1") -> Iterator[SpireAgent]:
    workdir.mkdir(parents=True, exist_ok=True)
    node_id = f"spiffe://{server.trust_domain}/{node}"
    token = server.cli("token", "generate", "-spiffeID", node_id, "-ttl", "600").split()[-1]
    socket = workdir / "agent.sock"
    (workdir / "agent.conf").write_text(
        f"""
agent {{
  data_dir = "{workdir / "data"}"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "{server.port}"
  socket_path = "{socket}"
  trust_domain = "{server.trust_domain}"
  insecure_bootstrap = true
}}
plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"""
    )
    argv = [str(peer("spire-agent")), "run", "-config", str(workdir / "agent.conf"), "-joinToken", token]

    def healthy() -> bool:
        done = subprocess.run(
            [str(peer("spire-agent")), "healthcheck", "-socketPath", str(socket)], capture_output=True, check=False
        )
        return done.returncode == 0

    with running(argv, ready=healthy, log=workdir / "agent.log", timeout_s=60):
        yield SpireAgent(socket, node_id)


def register(server: SpireServer, agent: SpireAgent, spiffe_id: str, *selectors: str) -> None:
    argv = ["entry", "create", "-parentID", agent.spiffe_id, "-spiffeID", spiffe_id]
    for selector in selectors:
        argv += ["-selector", selector]
    server.cli(*argv)


def wait_for_svid(socket: Path, spiffe_id: str, timeout_s: float = 30) -> None:
    from spiffe import WorkloadApiClient

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = WorkloadApiClient(f"unix://{socket}", default_timeout=2)
        try:
            if any(str(s.spiffe_id) == spiffe_id for s in client.fetch_x509_svids()):
                return
        except Exception:  # noqa: BLE001, S110 - not yet (the agent syncs entries every few seconds)
            pass
        finally:
            client.close()
        time.sleep(0.5)
    raise RuntimeError(f"the SPIRE agent at {socket} did not serve {spiffe_id} within {timeout_s} s")
