"""A real OPA server (the pinned peer) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from localpeers.hub import free_port
from localpeers.peers import peer
from localpeers.processes import running


@dataclass(frozen=True)
class OpaServer:
    port: int
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def opa_server(workdir: Path, *, port: int | None = None) -> Iterator[OpaServer]:
    port = port or free_port()
    # --v0-compatible: Gatekeeper templates are written in Rego v0; our own modules `import rego.v1`
    argv = [
        str(peer("opa")),
        "run",
        "--server",
        "--v0-compatible",
        "--optimize-store-for-read-speed",
        "--addr",
        f"127.0.0.1:{port}",
        "--log-level",
        "error",
    ]
    workdir.mkdir(parents=True, exist_ok=True)

    def healthy() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200

    with running(argv, ready=healthy, log=workdir / f"opa-{port}.log") as process:
        yield OpaServer(port, process.pid)
