"""A real trustd (uvicorn, TLS, SQLite) on 127.0.0.1 in a background thread, for integration tests.

It runs as `trustd serve` runs it (trustd.server.hub.server_config): the lifespan is on, so the revocation, CA-rotation
and federation watchers run by themselves, as in production; tests wait for them rather than drive them."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
import yaml

from attestation.eventlog import parse_event_log
from attestation.tpm2.constants import HashAlg
from edgetrust.spiffe.id import TrustDomain
from localpeers.processes import running
from localpeers.simboot import boot_events, write_event_log
from localpeers.softhsm import SoftToken
from localpeers.tlsca import TestCA
from trustd.server.ca import SpiffeCA
from trustd.server.hub import Hub, build_hub, server_config
from trustd.server.revocations import load_or_create_key
from trustd.server.settings import TrustdSettings

GOLDEN_BANKS = (HashAlg.SHA256, HashAlg.SHA1)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def golden_reference_values() -> dict[str, object]:
    """Classes used by the tests: PCRs of the simulated golden boot, in the SHA-256 and the SHA-1 bank."""
    replayed = parse_event_log(write_event_log(boot_events(), GOLDEN_BANKS)).replay()
    secure_boot_rule = {"pcr": 7, "type": "EV_EFI_VARIABLE_DRIVER_CONFIG", "variable": "SecureBoot"}
    return {
        "device_classes": {
            "edge-gateway": {
                "pcr_bank": "sha256",
                "pcrs": {i: [replayed[HashAlg.SHA256][i].hex()] for i in (0, 4, 7)},
                "event_log": "required",
                "events": {"require": [secure_boot_rule]},
            },
            "legacy-sha1": {
                "pcr_bank": "sha1",
                "allow_sha1_quotes": True,  # SHA-1 anywhere in a quote is an opt-in (a legacy TPM's class)
                "pcrs": {i: [replayed[HashAlg.SHA1][i].hex()] for i in (0, 4, 7)},
                "event_log": "optional",
            },
        }
    }


class RunningHub:
    def __init__(
        self,
        hub: Hub,
        server: uvicorn.Server,
        thread: threading.Thread,
        port: int,
        roots: Path,
        host: str = "127.0.0.1",
    ) -> None:
        self.hub = hub
        self.url = f"https://{host}:{port}"
        self.ca_bundle = roots
        #: what uvicorn serves: the app behind the production middleware (Saturation, its counters)
        self.served_app = server.config.app
        self._server = server
        self._thread = thread

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca_bundle)), timeout=30
        )

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.hub.close()


def init_trust_files(data_dir: Path, trust_domain: str = "edge.example") -> None:
    """What `trustd ca init` does for a throwaway test hub, keeping what is there: a test that made its CA beforehand
    (to mint for it) keeps it. A hub never does this itself (trustd.server.ca.material)."""
    SpiffeCA.load_or_create_root(data_dir / "ca", trust_domain=TrustDomain.parse(trust_domain))
    load_or_create_key(data_dir / "revocations")


@contextmanager
def running_hub(
    workdir: Path,
    *,
    ek_roots: Path,
    reference_values: dict[str, object] | None = None,
    reference_values_file: Path | None = None,
    init_trust: bool = True,
    **settings: object,
) -> Iterator[RunningHub]:
    """The hub's trust material is made in its data directory first (as `trustd ca init`) unless `init_trust`
    is false or the keys are on a PKCS#11 token (the test inits the token itself).
    `reference_values_file` is used as it is (a file `trustctl refvalues capture` wrote); else the
    `reference_values` mapping (default: the golden boot's) is written for the hub. `listen_host` (a settings
    field) moves it off loopback, e.g. to the real cluster's node address (give `server_ip_addresses` with it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    refvalues = reference_values_file or workdir / "reference-values.yaml"
    if reference_values_file is None:
        refvalues.write_text(yaml.safe_dump(reference_values or golden_reference_values()))
    host = str(settings.get("listen_host", "127.0.0.1"))
    port = int(str(settings.pop("listen_port", 0))) or free_port(host)  # a fixed port: a restart keeps the URL
    if init_trust and settings.get("pkcs11_module") is None:
        init_trust_files(workdir / "hub", str(settings.get("trust_domain", "edge.example")))
    hub = build_hub(
        TrustdSettings(
            data_dir=workdir / "hub",
            ek_roots_dir=ek_roots,
            reference_values=refvalues,
            listen_port=port,
            **settings,  # type: ignore[arg-type]
        )
    )
    roots = workdir / "hub-roots.pem"
    roots.write_bytes(hub.ca.x509_authorities_pem())
    config = server_config(hub)  # as `trustd serve` runs it: lifespan on, so its watchers run
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    running = RunningHub(hub, server, thread, port, roots, host)
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            running.stop()
            raise RuntimeError("trustd did not start within 15 s")
        time.sleep(0.02)
    try:
        yield running
    finally:
        running.stop()


@contextmanager
def running_policy_hub(
    workdir: Path,
    *,
    fleet: dict[str, object],
    publisher_keys: dict[str, bytes],
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    ek_roots: Path | None = None,
) -> Iterator[RunningHub]:
    """A hub serving policy bundles: the fleet file, the publishers' keys (id -> PEM), and no devices to enroll
    unless `ek_roots` is given (else its EK roots are a throwaway certificate); `listen_host` (also its
    certificate's IP SAN) and `listen_port` as for running_hub."""
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "publisher-keys"
    keys.mkdir(exist_ok=True)
    for key_id, pem in publisher_keys.items():
        (keys / f"{key_id}.pem").write_bytes(pem)
    fleet_file = workdir / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet))
    if ek_roots is None:
        ek_roots = workdir / "ek-roots"
        ek_roots.mkdir(exist_ok=True)
        (ek_roots / "unused.pem").write_bytes(TestCA(workdir / "unused-ek-ca").ca_file.read_bytes())
    with running_hub(
        workdir / "hub",
        ek_roots=ek_roots,
        fleet_file=fleet_file,
        policy_keys_dir=keys,
        trust_domain="edge.example",
        listen_host=listen_host,
        server_ip_addresses=(listen_host,),
        listen_port=listen_port,
    ) as hub:
        yield hub


@dataclass(frozen=True)
class HubProcess:
    url: str
    ca_bundle: Path
    data_dir: Path
    pid: int
    process: subprocess.Popen[bytes]

    def worker_pids(self) -> list[int]:
        """The processes serving (`trustd serve --workers N`: its N workers; else the one `pid`)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        workers = [
            int(child)
            for child in children
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()  # not multiprocessing's resource tracker
        ]
        return workers or [self.pid]


@contextmanager
def hub_process(
    workdir: Path,
    *,
    ek_roots: Path,
    extra_args: tuple[str, ...] = (),
    workers: int = 1,
    store_url: str | None = None,
    token: SoftToken | None = None,
) -> Iterator[HubProcess]:
    """`trustd serve` in its own process (benchmarks: the hub must not share a GIL with its load); `workers`
    above 1 needs `store_url` (PostgreSQL). With `token`, the trust material is made on that SoftHSM2 token
    (`trustd ca init`, as the chart's init Job does) and every worker logs in to it; else in the data dir."""
    workdir.mkdir(parents=True, exist_ok=True)
    refvalues = workdir / "reference-values.yaml"
    refvalues.write_text(yaml.safe_dump(golden_reference_values()))
    port = free_port()
    data = workdir / "hub"
    trustd = str(Path(sys.executable).parent / "trustd")
    trust = ["--data-dir", str(data), "--trust-domain", "edge.example"]
    if token is not None:
        trust += ["--pkcs11-module", str(token.module), "--pkcs11-token", token.label]
        trust += ["--pkcs11-pin-file", str(token.pin_file)]
    argv = [trustd, "serve", *trust, "--ek-roots", str(ek_roots), "--reference-values", str(refvalues)]
    argv += ["--port", str(port), *extra_args]
    if workers != 1:
        argv += ["--workers", str(workers)]
    if store_url is not None:
        argv += ["--store", store_url]
    environ = {**os.environ, **(token.environ() if token is not None else {})}
    ca = workdir / "hub-roots.pem"
    if token is not None:
        subprocess.run([trustd, "ca", "init", *trust], env=environ, capture_output=True, check=True)
        ca.write_bytes(
            subprocess.run([trustd, "bundle", "--pem", *trust], env=environ, capture_output=True, check=True).stdout
        )
    else:
        init_trust_files(data)
        ca.write_bytes((data / "ca" / "ca.crt").read_bytes())

    log = workdir / "trustd.log"

    def ready() -> bool:
        return (
            ca.exists()
            and (workers == 1 or log.read_text().count(" serving (pid ") >= workers)  # every worker, not the first
            and httpx.get(
                f"https://127.0.0.1:{port}/healthz", verify=ssl.create_default_context(cafile=str(ca)), timeout=1
            ).status_code
            == 200
        )

    with running(argv, ready=ready, log=log, env=environ, timeout_s=60) as process:
        yield HubProcess(f"https://127.0.0.1:{port}", ca, data, process.pid, process)


def connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """pid -> how many established connections to `port` (the server's side) it holds, from /proc: which
    worker of `trustd serve --workers N` took which connections (tests, benchmarks)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    owners = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == "01" and inode in inodes:  # 01: ESTABLISHED
                owners[inodes[inode]] += 1
    return owners
