"""X.509-SVID signing throughput: trustd against SPIRE server, minting the same kind of SVID in one run.

trustd: the node agent's path, `POST /v1/agent/svids` (one CSR per request, HTTPS with the node's SVID, the
entry checked, the SVID signed). SPIRE: its admin API `spire.api.server.svid.v1.SVID/MintX509SVID` over the
server's unix socket (what `spire-server x509 mint` calls, without the process start), with the CSR carrying
the SPIFFE ID. Both are driven by CLIENTS concurrent clients for a fixed time, alternating twice; keys and
CSRs are made before. The SPIRE request and answer are protobuf written by hand (two fields), so no generated
code is needed.

trustd runs on PostgreSQL in three shapes, each measured side by side with SPIRE (on the same 2 cores):
`trustd serve --workers 2` with the CA in files (the headline: the hub using both cores), one process, and
2 workers signing on a SoftHSM2 token (the shipped replica configuration: the key never leaves the token).
The CPU of the hub's processes, of SPIRE server and of this load generator are measured during each run, so a
client that starves the server shows in the table.
Figure: ratio_vs_spire = our SVIDs/s (2 workers, one CSR per request) / SPIRE's SVIDs/s; target >= 1.8.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import httpx
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from localpeers.hub import HubProcess, connections_by_pid, hub_process
from localpeers.nodes import OPERATOR, boot_swtpm, create_entry, ek_roots_of, enroll_node
from localpeers.postgres import running_postgres
from localpeers.softhsm import SoftToken, make_token
from localpeers.spire import running_spire_server
from localpeers.swtpm import SoftwareTPMFactory
from localpeers.tlsca import TestCA

#: clients at once on both sides: enough node agents that the kernel spreads them over the workers
CLIENTS = int(os.environ.get("SVID_MINT_CLIENTS", "16"))
THREADS = CLIENTS
BATCH = 16
SECONDS = float(os.environ.get("SVID_MINT_SECONDS", "6"))


def csr(spiffe_id: str | None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench")])
    )
    if spiffe_id:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mint_request(der: bytes, ttl: int) -> bytes:
    return b"\x0a" + varint(len(der)) + der + b"\x10" + varint(ttl)


def drive(call: object, requests: list[object]) -> int:
    """Calls made by THREADS threads in SECONDS."""
    done = [0] * THREADS
    stop = time.monotonic() + SECONDS

    def worker(index: int) -> None:
        i = index
        while time.monotonic() < stop:
            call(requests[i % len(requests)])  # type: ignore[operator]
            done[index] += 1
            i += THREADS

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def drive_hub(url: str, context: ssl.SSLContext, bodies: list[dict[str, Any]]) -> int:
    """Requests made to trustd by CLIENTS concurrent keep-alive connections in SECONDS.

    The load generator shares the 2 cores with the hub, so what it spends per request is taken from the hub:
    aiohttp spent 0.56 ms of CPU per request here (SPIRE's C-core gRPC client 0.38 ms), so this is a minimal
    HTTP/1.1 client on uvloop: each request's bytes made once, each answer's status checked and its whole body
    read (Content-Length), as a load generator such as wrk does. The hub's side is unchanged."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    requests = [
        b"POST /v1/agent/svids HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (host.encode(), len(payload), payload)
        for payload in (json.dumps(body).encode() for body in bodies)
    ]

    async def run() -> int:
        done = 0
        stop = time.monotonic() + SECONDS

        async def worker(index: int) -> None:
            nonlocal done
            reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=host)
            try:
                i = index
                while time.monotonic() < stop:
                    writer.write(requests[i % len(requests)])
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                    answer = await reader.readexactly(length)
                    assert head.startswith(b"HTTP/1.1 200 "), head + answer
                    done += 1
                    i += CLIENTS
            finally:
                writer.close()

        await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
        return done

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run())


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pid_running(needle: str) -> int:
    """The pid of the process whose command line holds `needle` (SPIRE server, by its config file)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no process running with {needle}")


@dataclass
class Run:
    """What one shape of trustd measured, and SPIRE beside it."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "batched": [], "spire": []})
    cpu: dict[str, list[float]] = field(
        default_factory=lambda: {"hub": [], "client": [], "spire": [], "spire_client": []}
    )
    split: dict[int, int] = field(default_factory=dict)


def measured(pids: list[int], run: Callable[[], float]) -> tuple[float, float, float]:
    """run() -> rate; and the % of a core used by `pids` and by this process meanwhile."""
    before, own = sum(cpu_s(p) for p in pids), own_cpu_s()
    rate = run()
    return rate, (sum(cpu_s(p) for p in pids) - before) / SECONDS * 100, (own_cpu_s() - own) / SECONDS * 100


SHAPES = (("workers", 2, False), ("one_process", 1, False), ("token", 2, True))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-mint-"))
    factory = SoftwareTPMFactory(work / "tpms")
    tpm, event_log = boot_swtpm(factory, "node")
    runs = {name: Run() for name, _, _ in SHAPES}
    try:
        roots = ek_roots_of(factory, work / "ek-roots")
        with (
            running_postgres(TestCA(work / "pg-ca")) as postgres,
            running_spire_server(work / "spire", postgres) as spire,
        ):
            spire_pid = pid_running(str(work / "spire" / "server.conf"))
            channel = grpc.insecure_channel(f"unix://{spire.socket}")
            mint: Any = channel.unary_unary("/spire.api.server.svid.v1.SVID/MintX509SVID")
            spire_csrs = [mint_request(csr("spiffe://spire.example/workload/mint"), 3600) for _ in range(64)]

            def theirs(body: object) -> None:
                answer = mint(body, timeout=30)
                assert len(answer) > 300  # an X509SVID with its chain

            theirs(spire_csrs[0])
            pems = [
                x509.load_der_x509_csr(csr(None)).public_bytes(serialization.Encoding.PEM).decode() for _ in range(64)
            ]
            for name, workers, on_token in SHAPES:
                place = work / name
                token = make_token(place / "token") if on_token else None
                store_url = postgres.new_database()
                with hub_process(
                    place / "hub",
                    ek_roots=roots,
                    extra_args=("--operator", OPERATOR),
                    workers=workers,
                    store_url=store_url,
                    token=token,
                ) as hub:
                    measure(hub, runs[name], place, token, store_url, tpm.tcti, event_log, pems, spire_pid,
                            theirs, spire_csrs)  # fmt: skip
            channel.close()
    finally:
        tpm.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(runs)


def measure(
    hub: HubProcess,
    run: Run,
    place: Path,
    token: SoftToken | None,
    store_url: str,
    tcti: str,
    event_log: bytes,
    pems: list[str],
    spire_pid: int,
    theirs: Callable[[object], None],
    spire_csrs: list[bytes],
) -> None:
    node = enroll_node(
        hub.url, hub.ca_bundle, tcti=tcti, event_log=event_log, out_dir=place / "svid", node="n1", site="bench"
    )
    operator_dir = place / "operator"
    trust = ["--data-dir", str(hub.data_dir), "--trust-domain", "edge.example", "--store", store_url]
    if token is not None:
        trust += ["--pkcs11-module", str(token.module), "--pkcs11-token", token.label]
        trust += ["--pkcs11-pin-file", str(token.pin_file)]
    subprocess.run(
        [str(Path(sys.executable).parent / "trustd"), "svid", "mint", "--spiffe-id", OPERATOR,
         "--out", str(operator_dir), *trust],
        env={**os.environ, **(token.environ() if token is not None else {})}, capture_output=True, check=True,
    )  # fmt: skip
    hub_args = ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle)]
    hub_args += ["--svid", str(operator_dir / "svid.pem"), "--svid-key", str(operator_dir / "svid.key")]
    create_entry(hub_args, "spiffe://edge.example/workload/mint", node.spiffe_id, f"unix:uid:{os.getuid()}")
    operator = ssl.create_default_context(cafile=str(hub.ca_bundle))
    operator.load_cert_chain(str(operator_dir / "svid.pem"), str(operator_dir / "svid.key"))
    entry_id = httpx.get(f"{hub.url}/v1/fleet/entries", verify=operator).json()["entries"][0]["id"]
    ours_csrs = [{"requests": [{"entry_id": entry_id, "csr": pem}]} for pem in pems]
    # the agent's own path: every due SVID in one request
    batched = [{"requests": [{"entry_id": entry_id, "csr": pem} for pem in pems[i : i + BATCH]]} for i in (0, 16, 32)]
    context = ssl.create_default_context(cafile=str(place / "svid" / "bundle.pem"))
    context.load_cert_chain(str(place / "svid" / "svid.pem"), str(place / "svid" / "svid.key"))
    hub_pids = [hub.pid, *hub.worker_pids()] if len(hub.worker_pids()) > 1 else [hub.pid]
    drive_hub(hub.url, context, ours_csrs[:THREADS])  # warm: every worker's caches, the connections
    for _ in range(2):
        rate, hub_cpu, client_cpu = measured(hub_pids, lambda: drive_hub(hub.url, context, ours_csrs) / SECONDS)
        run.rates["ours"].append(rate)
        run.cpu["hub"].append(hub_cpu)
        run.cpu["client"].append(client_cpu)
        run.rates["batched"].append(drive_hub(hub.url, context, batched) * BATCH / SECONDS)
        rate, spire_cpu, client_cpu = measured([spire_pid], lambda: drive(theirs, spire_csrs) / SECONDS)  # type: ignore[arg-type]
        run.rates["spire"].append(rate)
        run.cpu["spire"].append(spire_cpu)
        run.cpu["spire_client"].append(client_cpu)
    run.split = served_by(hub, context)


def served_by(hub: HubProcess, context: ssl.SSLContext) -> dict[int, int]:
    """How CLIENTS connections of a run spread over the hub's workers (pid -> connections)."""
    clients = [httpx.Client(base_url=hub.url, verify=context, timeout=30) for _ in range(CLIENTS)]
    try:
        for client in clients:
            client.get("/healthz")
        return connections_by_pid(hub.worker_pids(), int(hub.url.rsplit(":", 1)[1]))
    finally:
        for client in clients:
            client.close()


def ms_per_svid(run: Run, signer: str, cpu: str) -> float:
    best = run.rates[signer].index(max(run.rates[signer]))
    return run.cpu[cpu][best] * 10 / run.rates[signer][best]  # % of a core over the run / (SVIDs per second)


def report(runs: dict[str, Run]) -> None:
    print(f"svid_mint: X.509-SVIDs signed per second, {CLIENTS} clients on each side, {SECONDS:.0f} s, best of 2")
    print(f"{'trustd shape':>12} {'signer':>9} {'svids_per_s':>12} {'runs':>12} {'cpu %core':>10} {'ratio':>6}")
    figures: list[tuple[str, float, str]] = []
    for name, run in runs.items():
        spire = max(run.rates["spire"])
        for signer, key in (("ours", "hub"), ("batched", "hub"), ("spire", "spire")):
            values = run.rates[signer]
            cpu = f"{max(run.cpu[key]):.0f}" if signer != "batched" else ""
            print(
                f"{name:>12} {signer:>9} {max(values):12.0f} {', '.join(f'{v:.0f}' for v in values):>12} {cpu:>10} "
                f"{max(values) / spire:6.2f}"
            )
        load = f"trustd {max(run.cpu['client']):.0f}, SPIRE {max(run.cpu['spire_client']):.0f}"
        print(f"{name:>12} load generator CPU (% of a core) driving {load}; connections per worker: {run.split}")
        suffix = "" if name == "workers" else f"_{name}"
        figures += [
            (f"svids_per_s_edgetrust{suffix}", max(run.rates["ours"]), "1/s"),
            (f"svids_per_s_edgetrust_batched{suffix}", max(run.rates["batched"]), "1/s"),
            (f"svids_per_s_spire{suffix}", spire, "1/s"),
            (f"hub_cpu_percent{suffix}", max(run.cpu["hub"]), "%"),
            (f"load_generator_cpu_percent{suffix}", max(run.cpu["client"]), "%"),
            (f"spire_cpu_percent{suffix}", max(run.cpu["spire"]), "%"),
            (f"ratio_vs_spire_batched{suffix}", max(run.rates["batched"]) / spire, "ratio"),
        ]
        # CPU per SVID, from the best run of each: on cores shared by both sides, what bounds the ratio
        ours_ms, spire_ms = ms_per_svid(run, "ours", "hub"), ms_per_svid(run, "spire", "spire")
        client_ms, spire_client_ms = ms_per_svid(run, "ours", "client"), ms_per_svid(run, "spire", "spire_client")
        print(f"{name:>12} CPU ms per SVID: trustd {ours_ms:.2f} (+ load generator {client_ms:.2f}), "
              f"SPIRE {spire_ms:.2f} (+ load generator {spire_client_ms:.2f})")  # fmt: skip
        figures += [
            (f"hub_cpu_ms_per_svid{suffix}", ours_ms, "ms"),
            (f"spire_cpu_ms_per_svid{suffix}", spire_ms, "ms"),
            (f"load_generator_cpu_ms_per_request{suffix}", client_ms, "ms"),
        ]
        figures.append((f"ratio_vs_spire{suffix}", max(run.rates["ours"]) / spire, "ratio"))
    headline = [f for f in figures if f[0] == "ratio_vs_spire"]
    for metric, value, unit in [f for f in figures if f[0] != "ratio_vs_spire"] + headline:
        print("RESULT " + json.dumps({"bench": "svid_mint", "metric": metric, "value": round(value, 3), "unit": unit}))


if __name__ == "__main__":
    main()
