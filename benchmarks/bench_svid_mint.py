"""X.509-SVID signing throughput: trustd against SPIRE server, minting the same kind of SVID in one run.

trustd: the node agent's path, `POST /v1/agent/svids` (one CSR per request, HTTPS with the node's SVID, the
entry checked, the SVID signed). SPIRE: its admin API `spire.api.server.svid.v1.SVID/MintX509SVID` over the
server's unix socket (what `spire-server x509 mint` calls, without the process start), with the CSR carrying
the SPIFFE ID. Both are driven by 4 threads for a fixed time, alternating twice; keys and CSRs are made before.
The SPIRE request and answer are protobuf written by hand (two fields), so no generated code is needed.
Figure: ratio_vs_spire = our SVIDs/s / SPIRE's SVIDs/s; target >= 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import grpc
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetrust.spiffe.id import TrustDomain
from localpeers.hub import hub_process
from localpeers.nodes import OPERATOR, boot_swtpm, create_entry, ek_roots_of, enroll_node, operator_args
from localpeers.postgres import running_postgres
from localpeers.spire import running_spire_server
from localpeers.swtpm import SoftwareTPMFactory
from localpeers.tlsca import TestCA
from trustd.server.ca import SpiffeCA

THREADS = 4
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
    """Requests made to trustd by THREADS concurrent aiohttp clients in SECONDS (its client costs a seventh of
    httpx's per request, so the client, in this process and on these 2 cores, is not what is measured)."""

    async def run() -> int:
        done = 0
        stop = time.monotonic() + SECONDS
        async with aiohttp.ClientSession(
            base_url=url, connector=aiohttp.TCPConnector(ssl=context, limit=THREADS)
        ) as session:

            async def worker(index: int) -> None:
                nonlocal done
                i = index
                while time.monotonic() < stop:
                    async with session.post("/v1/agent/svids", json=bodies[i % len(bodies)]) as answer:
                        assert answer.status == 200, await answer.text()
                        await answer.read()
                    done += 1
                    i += THREADS

            await asyncio.gather(*(worker(i) for i in range(THREADS)))
        return done

    return asyncio.run(run())


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-mint-"))
    factory = SoftwareTPMFactory(work / "tpms")
    tpm, event_log = boot_swtpm(factory, "node")
    rates: dict[str, list[float]] = {"edgetrust": [], "edgetrust_batched": [], "spire": []}
    hub_cpu: list[float] = []
    try:
        roots = ek_roots_of(factory, work / "ek-roots")
        with (
            hub_process(work / "hub", ek_roots=roots, extra_args=("--operator", OPERATOR)) as hub,
            running_postgres(TestCA(work / "pg-ca")) as postgres,
            running_spire_server(work / "spire", postgres) as spire,
        ):
            node = enroll_node(
                hub.url,
                hub.ca_bundle,
                tcti=tpm.tcti,
                event_log=event_log,
                out_dir=work / "svid",
                node="n1",
                site="bench",
            )
            ca = SpiffeCA.load_or_create_root(hub.data_dir / "ca", trust_domain=TrustDomain.parse("edge.example"))
            hub_args = operator_args(hub.url, hub.ca_bundle, ca, work / "operator")
            create_entry(hub_args, "spiffe://edge.example/workload/mint", node.spiffe_id, f"unix:uid:{os.getuid()}")
            cert, key = work / "operator" / "svid.pem", work / "operator" / "svid.key"
            operator = ssl.create_default_context(cafile=str(hub.ca_bundle))
            operator.load_cert_chain(str(cert), str(key))
            entry_id = httpx.get(f"{hub.url}/v1/fleet/entries", verify=operator).json()["entries"][0]["id"]
            pems = [
                x509.load_der_x509_csr(csr(None)).public_bytes(serialization.Encoding.PEM).decode() for _ in range(64)
            ]
            ours_csrs = [{"requests": [{"entry_id": entry_id, "csr": pem}]} for pem in pems]
            # the agent's own path: every due SVID in one request
            batched = [
                {"requests": [{"entry_id": entry_id, "csr": pem} for pem in pems[i : i + BATCH]]} for i in (0, 16, 32)
            ]
            spire_csrs = [mint_request(csr("spiffe://spire.example/workload/mint"), 3600) for _ in range(64)]
            context = ssl.create_default_context(cafile=str(work / "svid" / "bundle.pem"))
            context.load_cert_chain(str(work / "svid" / "svid.pem"), str(work / "svid" / "svid.key"))
            local = threading.local()

            def ours(body: object) -> None:
                client = getattr(local, "client", None)
                if client is None:
                    client = local.client = httpx.Client(base_url=hub.url, verify=context, timeout=30)
                answer = client.post("/v1/agent/svids", json=body)
                assert answer.status_code == 200, answer.text

            channel = grpc.insecure_channel(f"unix://{spire.socket}")
            mint = channel.unary_unary("/spire.api.server.svid.v1.SVID/MintX509SVID")

            def theirs(body: object) -> None:
                answer = mint(body, timeout=30)
                assert len(answer) > 300  # an X509SVID with its chain

            ours(ours_csrs[0])
            theirs(spire_csrs[0])
            for _ in range(2):
                cpu0 = cpu_s(hub.pid)
                rates["edgetrust"].append(drive_hub(hub.url, context, ours_csrs) / SECONDS)
                hub_cpu.append((cpu_s(hub.pid) - cpu0) / SECONDS * 100)
                rates["edgetrust_batched"].append(drive_hub(hub.url, context, batched) * BATCH / SECONDS)
                rates["spire"].append(drive(theirs, spire_csrs) / SECONDS)  # type: ignore[arg-type]
            channel.close()
    finally:
        tpm.stop()
        shutil.rmtree(work, ignore_errors=True)

    ours_rate, spire_rate = max(rates["edgetrust"]), max(rates["spire"])
    batched_rate = max(rates["edgetrust_batched"])
    print(f"svid_mint: X.509-SVIDs signed per second, {THREADS} client threads, {SECONDS:.0f} s, best of 2")
    print(f"{'signer':>18} {'svids_per_s':>12} {'runs':>20}")
    for name, values in rates.items():
        print(f"{name:>18} {max(values):12.0f} {', '.join(f'{v:.0f}' for v in values):>20}")
    ratio = ours_rate / spire_rate
    print(f"trustd CPU while minting one per request: {max(hub_cpu):.0f} % of a core (it is one process)")
    print(f"ratio (ours, one CSR per request / SPIRE MintX509SVID): {ratio:.2f}")
    print(f"ratio (ours, the agent's {BATCH} CSRs per request / SPIRE): {batched_rate / spire_rate:.2f}")
    figures = (
        ("svids_per_s_edgetrust", ours_rate, "1/s"),
        ("svids_per_s_edgetrust_batched", batched_rate, "1/s"),
        ("svids_per_s_spire", spire_rate, "1/s"),
        ("ratio_vs_spire_batched", batched_rate / spire_rate, "ratio"),
        ("ratio_vs_spire", ratio, "ratio"),
    )
    for metric, value, unit in figures:
        print("RESULT " + json.dumps({"bench": "svid_mint", "metric": metric, "value": round(value, 3), "unit": unit}))


if __name__ == "__main__":
    main()
