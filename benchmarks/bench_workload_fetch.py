"""Workload API `fetch_x509_svid` through the official py-spiffe client: our agent against SPIRE's, in one run.

Ours: a swtpm device enrolled with trustd, an entry for this uid, `trustctl agent run` serving the socket.
SPIRE: spire-server v1.13.3 (datastore in our test PostgreSQL) and spire-agent (join token, unix workload
attestor) with an entry for the same uid. Both are warmed, then measured in alternating rounds of sequential
calls on one client each, so that drift on this 2-core machine falls on both alike.
Figure: ratio_vs_spire = our p50 / SPIRE's p50; target <= 1.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spiffe import WorkloadApiClient

from localpeers.hub import running_hub
from localpeers.nodes import OPERATOR, boot_swtpm, create_entry, ek_roots_of, enroll_node, operator_args
from localpeers.postgres import running_postgres
from localpeers.processes import running
from localpeers.spire import register, running_spire_agent, running_spire_server, wait_for_svid
from localpeers.swtpm import SoftwareTPMFactory
from localpeers.tlsca import TestCA

ROUNDS = 10
CALLS = 100  # per round and side


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(client: WorkloadApiClient, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        client.fetch_x509_svid()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-workload-"))
    uid = os.getuid()
    factory = SoftwareTPMFactory(work / "tpms")
    tpm, event_log = boot_swtpm(factory, "node")
    try:
        roots = ek_roots_of(factory, work / "ek-roots")
        with (
            running_hub(work / "hub", ek_roots=roots, operators=(OPERATOR,)) as hub,
            running_postgres(TestCA(work / "pg-ca")) as postgres,
            running_spire_server(work / "spire-server", postgres) as spire,
            running_spire_agent(work / "spire-agent", spire) as spire_agent,
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
            ours_id = "spiffe://edge.example/workload/bench"
            operator = operator_args(hub.url, hub.ca_bundle, hub.hub.ca, work / "operator")
            create_entry(operator, ours_id, node.spiffe_id, f"unix:uid:{uid}")
            spire_id = "spiffe://spire.example/workload/bench"
            register(spire, spire_agent, spire_id, f"unix:uid:{uid}")
            socket = work / "agent" / "api.sock"
            argv = [str(Path(sys.executable).parent / "trustctl"), "agent", "run", "--hub", hub.url]
            argv += ["--svid-dir", str(work / "svid"), "--socket", str(socket), "--state-dir", str(work / "state")]
            with running(argv, ready=socket.exists, log=work / "agent.log"):
                wait_for_svid(socket, ours_id)
                wait_for_svid(spire_agent.socket, spire_id)
                ours = WorkloadApiClient(f"unix://{socket}", default_timeout=10)
                theirs = WorkloadApiClient(f"unix://{spire_agent.socket}", default_timeout=10)
                timed(ours, 50)
                timed(theirs, 50)
                samples: dict[str, list[float]] = {"edgetrust": [], "spire": []}
                for _ in range(ROUNDS):
                    samples["edgetrust"] += timed(ours, CALLS)
                    samples["spire"] += timed(theirs, CALLS)
                ours.close()
                theirs.close()
    finally:
        tpm.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"workload_fetch: py-spiffe fetch_x509_svid, {ROUNDS} alternating rounds x {CALLS} calls per side")
    print(f"{'agent':>10} {'p50_ms':>8} {'p90_ms':>8} {'p99_ms':>8} {'mean_ms':>8}")
    for name, values in samples.items():
        print(
            f"{name:>10} {percentile(values, 0.5):8.2f} {percentile(values, 0.9):8.2f} "
            f"{percentile(values, 0.99):8.2f} {statistics.fmean(values):8.2f}"
        )
    ratio = percentile(samples["edgetrust"], 0.5) / percentile(samples["spire"], 0.5)
    print(f"ratio (ours / SPIRE, p50): {ratio:.2f}")
    figures = (
        ("p50_ms_edgetrust", percentile(samples["edgetrust"], 0.5), "ms"),
        ("p50_ms_spire", percentile(samples["spire"], 0.5), "ms"),
        ("p99_ms_edgetrust", percentile(samples["edgetrust"], 0.99), "ms"),
        ("p99_ms_spire", percentile(samples["spire"], 0.99), "ms"),
        ("ratio_vs_spire", ratio, "ratio"),
    )
    for metric, value, unit in figures:
        print(
            "RESULT "
            + json.dumps({"bench": "workload_fetch", "metric": metric, "value": round(value, 3), "unit": unit})
        )


if __name__ == "__main__":
    main()
