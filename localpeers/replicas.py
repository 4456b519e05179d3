"""trustd as N replicas, for the high-availability benchmarks (bench_fleet_ha, bench_reconnect_storm): `trustd serve`
processes on one PostgreSQL, their keys on one PKCS#11 token (SoftHSM2) made once with `trustd ca init`, as a
Deployment of N pods runs them (docs/trust-across-replicas.md). HAProxy goes in front (localpeers/haproxy.py).

A `Replica` can be killed and started again on the same port and data directory, as a pod restarted in place: the
balancer's configuration names fixed ports, and a replica must come back with nothing of its own but a serving
certificate (all its state is in the store).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from localpeers.hub import free_port
from localpeers.softhsm import SoftToken
from trustd.server.ca import material
from trustd.server.settings import TrustdSettings

TRUSTD = str(Path(sys.executable).parent / "trustd")


def token_flags(token: SoftToken) -> list[str]:
    """The flags that put a trustd command's keys on `token`."""
    return [
        "--pkcs11-module", str(token.module), "--pkcs11-token", token.label, "--pkcs11-pin-file", str(token.pin_file),
    ]  # fmt: skip


def init_trust(token: SoftToken, data_dir: Path) -> material.TrustMaterial:
    """`trustd ca init` on the token, once (as the chart's pre-install Job), then the material opened in this
    process too (to issue the simulated clusters' SVIDs; the caller closes it)."""
    init = subprocess.run(
        [TRUSTD, "ca", "init", "--data-dir", str(data_dir), "--trust-domain", "edge.example", *token_flags(token)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **token.environ()},
    )  # fmt: skip
    if init.returncode != 0:
        raise RuntimeError(f"trustd ca init failed: {init.stderr}")
    token.activate()
    settings = TrustdSettings(data_dir=data_dir, trust_domain="edge.example", **token.settings())  # type: ignore[arg-type]
    return material.load(settings)


@dataclass
class Replica:
    """One `trustd serve`; `start()` waits until its /healthz answers."""

    name: str
    workdir: Path
    argv: list[str]
    env: dict[str, str]
    verify: ssl.SSLContext
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"replica {self.name} is not running"
        return self.process.pid

    def launch(self) -> None:
        """Start the process without waiting (several replicas come up in parallel, then `wait_ready`)."""
        with (self.workdir / "trustd.log").open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", verify=self.verify, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "trustd.log").read_text()[-3000:]
                raise RuntimeError(f"replica {self.name} did not start:\n{tail}")
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s (a graceful stop waits for thousands of long polls)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def running_replicas(
    workdir: Path, count: int, *, store_url: str, token: SoftToken, roots: Path, args: Sequence[str] = ()
) -> Iterator[list[Replica]]:
    """`count` replicas on `store_url` and `token`, each with its own (empty) data directory; all stopped at the
    end, also on failure."""
    verify = ssl.create_default_context(cafile=str(roots))
    env = {**os.environ, **token.environ()}
    replicas = []
    for i in range(count):
        home = workdir / f"r{i}"
        home.mkdir(parents=True)
        port = free_port()
        argv = [TRUSTD, "serve", "--data-dir", str(home / "data"), "--trust-domain", "edge.example"]
        argv += ["--port", str(port), "--store", store_url, *token_flags(token), *args]
        replicas.append(Replica(f"r{i}", home, argv, env, verify, port))
    with ExitStack() as stack:
        for replica in replicas:
            stack.callback(replica.stop)
            replica.launch()
        for replica in replicas:
            replica.wait_ready()
        yield replicas
