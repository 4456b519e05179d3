"""End-to-end enrollments: several swtpm devices enrolling in parallel against one trustd (a separate process).

Measures enrollments/s and latency as the devices see them, and trustd's own CPU time per enrollment (from
/proc/<pid>/stat, user + system), which is the hub's cost independent of the TPMs' speed. Every device does
the whole protocol each time: EK, fresh AK, challenge, ActivateCredential, quote, event log, CSR.

Usage: python benchmarks/bench_enroll_e2e.py [--devices 4] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestation.device import TPMDevice
from localpeers.hub import GOLDEN_BANKS, free_port, golden_reference_values, init_trust_files
from localpeers.simboot import boot_events, measure_boot
from localpeers.swtpm import SoftwareTPM, SoftwareTPMFactory
from trustd.agent.enroll_client import enroll


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15, help="enrollments per device")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-enroll-"))
    tpms: list[SoftwareTPM] = []
    hub: subprocess.Popen[bytes] | None = None
    try:
        factory = SoftwareTPMFactory(work / "tpms")
        logs: list[bytes] = []
        for i in range(args.devices):
            tpm = factory.start(f"dev{i}")
            tpms.append(tpm)
            with TPMDevice(tpm.tcti) as device:
                logs.append(measure_boot(device, boot_events(), GOLDEN_BANKS))
        roots = work / "ek-roots"
        roots.mkdir()
        shutil.copy(factory.root_cert_path, roots / "root.pem")
        shutil.copy(factory.issuer_cert_path, roots / "intermediate.pem")
        refvalues = work / "refvalues.yaml"
        refvalues.write_text(yaml.safe_dump(golden_reference_values()))
        port = free_port()
        init_trust_files(work / "hub")  # `trustd ca init`
        hub = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "trustd"),
                "serve",
                "--data-dir",
                str(work / "hub"),
                "--ek-roots",
                str(roots),
                "--reference-values",
                str(refvalues),
                "--port",
                str(port),
            ],
            stderr=subprocess.DEVNULL,
        )
        ca = work / "hub" / "ca" / "ca.crt"
        deadline = time.monotonic() + 30
        while True:
            try:
                if ca.exists():
                    httpx.get(
                        f"https://127.0.0.1:{port}/healthz", verify=ssl.create_default_context(cafile=str(ca))
                    ).raise_for_status()
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("trustd did not start")
            time.sleep(0.1)

        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def run_device(index: int) -> None:
            for round_ in range(args.rounds):
                start = time.perf_counter()
                try:
                    enroll(
                        server=f"https://127.0.0.1:{port}",
                        tcti=tpms[index].tcti,
                        out_dir=work / f"out{index}",
                        device_class="edge-gateway",
                        claims={"site": "bench", "node": f"dev{index}"},
                        ca_bundle=ca,
                        event_log=logs[index],
                    )
                except Exception as exc:  # noqa: BLE001 - a benchmark reports failures, it does not stop on them
                    with lock:
                        failures.append(f"dev{index} round {round_}: {exc}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

        cpu_before = _cpu_seconds(hub.pid)
        wall = time.perf_counter()
        threads = [threading.Thread(target=run_device, args=(i,)) for i in range(args.devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall
        cpu = _cpu_seconds(hub.pid) - cpu_before
    finally:
        if hub is not None:
            hub.terminate()
            hub.wait(timeout=10)
        for tpm in tpms:
            tpm.stop()
        shutil.rmtree(work, ignore_errors=True)

    if failures:
        print("\n".join(failures[:5]), file=sys.stderr)
    if not latencies:
        raise SystemExit("no enrollment succeeded")
    done = len(latencies)
    ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    per_s = done / wall
    cpu_ms = cpu * 1000 / done
    print(f"enroll_e2e: {args.devices} swtpm devices x {args.rounds} rounds, trustd in its own process")
    print(f"{'enrollments':>12} {'failed':>7} {'per_s':>8} {'p50_ms':>8} {'p99_ms':>8} {'trustd_cpu_ms':>14}")
    print(f"{done:>12} {len(failures):>7} {per_s:>8.1f} {p50:>8.1f} {p99:>8.1f} {cpu_ms:>14.2f}")
    for metric, value, unit in (
        ("per_s", per_s, "1/s"),
        ("p50_ms", p50, "ms"),
        ("p99_ms", p99, "ms"),
        ("cpu_ms_per_enroll", cpu_ms, "ms"),
    ):
        print("RESULT " + json.dumps({"bench": "enroll_e2e", "metric": metric, "value": round(value, 3), "unit": unit}))


if __name__ == "__main__":
    main()
