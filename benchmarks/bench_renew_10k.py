"""10,000 registered nodes renewing on a 1 h TTL: what it costs the hub and PostgreSQL.

The store holds 10,000 enrolled nodes (records written directly: a fleet's worth of rows, indexes and audit
history). The renewals themselves are real: swtpm devices, each enrolled for real, renew over mTLS with fresh
quotes against `trustd serve` (its own process) on a real PostgreSQL, back to back. The CPU time of trustd
and of every PostgreSQL process per renewal, times the fleet's rate (every node renews at half its 1 h
lifetime: 10,000 / 1,800 s = 5.6 renewals/s), gives the steady load.
Figures: hub_cpu_pct (of one core), postgres_cpu_pct, renew_p50_ms.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localpeers.hub import hub_process
from localpeers.nodes import boot_swtpm, ek_roots_of
from localpeers.postgres import running_postgres
from localpeers.swtpm import SoftwareTPM, SoftwareTPMFactory
from localpeers.tlsca import TestCA
from trustd.agent.enroll_client import enroll
from trustd.agent.renewal_client import renew_node
from trustd.server.store import AuditEvent, DeviceRecord, SvidRecord, open_store

NODES = 10_000
TTL_S = 3600
DEVICES = 4
RENEWALS_PER_DEVICE = 40


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float:
    """All PostgreSQL processes on the machine (the postmaster and its backends), including exited children."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # own and waited-for children
                    total += ticks / os.sysconf("SC_CLK_TCK")
            except OSError:
                continue
    return total


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-renew-"))
    factory = SoftwareTPMFactory(work / "tpms")
    tpms: list[SoftwareTPM] = []
    logs: list[bytes] = []
    latencies: list[float] = []
    try:
        for i in range(DEVICES):
            tpm, event_log = boot_swtpm(factory, f"dev{i}")
            tpms.append(tpm)
            logs.append(event_log)
        roots = ek_roots_of(factory, work / "ek-roots")
        with running_postgres(TestCA(work / "pg-ca")) as postgres:
            url = postgres.new_database()
            store = open_store(url)
            seeded = time.monotonic()
            for n in range(NODES):
                spiffe_id = f"spiffe://edge.example/site/s{n // 100}/node/n{n}"
                store.record_enrollment(
                    DeviceRecord(f"{n:064x}", spiffe_id, "edge-gateway", {"node": f"n{n}"}, "000b", 1.0),
                    SvidRecord(f"seed{n:x}", spiffe_id, f"{n:064x}", 1.0, 2.0),
                    AuditEvent(1.0, "enroll.complete", "enrolled", spiffe_id),
                )
            seeded_s = time.monotonic() - seeded
            store.close()
            args = ("--store", url)
            with hub_process(work / "hub", ek_roots=roots, extra_args=args) as hub:
                for i, tpm in enumerate(tpms):
                    enroll(
                        server=hub.url,
                        tcti=tpm.tcti,
                        out_dir=work / f"svid{i}",
                        device_class="edge-gateway",
                        claims={"site": "bench", "node": f"real{i}"},
                        ca_bundle=hub.ca_bundle,
                        event_log=logs[i],
                    )
                lock = threading.Lock()

                def device(i: int) -> None:
                    for _ in range(RENEWALS_PER_DEVICE):
                        start = time.perf_counter()
                        renew_node(hub=hub.url, svid_dir=work / f"svid{i}", tcti=tpms[i].tcti, event_log=logs[i])
                        with lock:
                            latencies.append((time.perf_counter() - start) * 1000)

                hub0, pg0, wall0 = cpu_s(hub.pid), postgres_cpu_s(), time.monotonic()
                threads = [threading.Thread(target=device, args=(i,)) for i in range(DEVICES)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                hub_cpu, pg_cpu, wall = cpu_s(hub.pid) - hub0, postgres_cpu_s() - pg0, time.monotonic() - wall0
    finally:
        for tpm in tpms:
            tpm.stop()
        shutil.rmtree(work, ignore_errors=True)

    renewals = len(latencies)
    rate = NODES / (TTL_S / 2)
    hub_pct = hub_cpu / renewals * rate * 100
    pg_pct = pg_cpu / renewals * rate * 100
    print(f"renew_10k: {NODES} nodes in PostgreSQL (seeded in {seeded_s:.0f} s); {renewals} real renewals")
    print(f"   ({DEVICES} swtpm devices, fresh quotes, mTLS) in {wall:.1f} s; fleet rate {rate:.2f} renewals/s")
    print(f"{'per_renewal_hub_ms':>18} {'per_renewal_pg_ms':>17} {'hub_cpu_pct':>11} {'pg_cpu_pct':>10} {'p50_ms':>7}")
    print(
        f"{hub_cpu / renewals * 1000:18.2f} {pg_cpu / renewals * 1000:17.2f} {hub_pct:11.2f} {pg_pct:10.2f} "
        f"{statistics.median(latencies):7.1f}"
    )
    figures = (
        ("hub_cpu_pct", hub_pct, "%"),
        ("postgres_cpu_pct", pg_pct, "%"),
        ("hub_cpu_ms_per_renewal", hub_cpu / renewals * 1000, "ms"),
        ("renew_p50_ms", statistics.median(latencies), "ms"),
    )
    for metric, value, unit in figures:
        print("RESULT " + json.dumps({"bench": "renew_10k", "metric": metric, "value": round(value, 3), "unit": unit}))


if __name__ == "__main__":
    main()
