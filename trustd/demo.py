"""`make demo`: the attestation → identity plane end to end, on this machine, with real parts.

Two software TPMs with EK certificates from a local "manufacturer" CA; a simulated measured boot on each
(the second with a tampered bootloader); the operator's reference values computed from the golden boot;
trustd on https://127.0.0.1; `trustctl enroll` for both devices. Everything lives in `.demo/`; every
process started here is stopped before it returns.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from attestation.eventlog import parse_event_log
from attestation.tpm2.constants import HashAlg

os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss logs probes of absent NV indexes as errors

from attestation.device import TPMDevice
from attestation.simboot import boot_events, measure_boot, write_event_log
from attestation.swtpm import SoftwareTPM, SoftwareTPMFactory

BANKS = (HashAlg.SHA256, HashAlg.SHA1)
DEVICE_CLASS = "edge-gateway"
QUOTED_PCRS = (0, 4, 7)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reference_values_from_golden_boot() -> dict[str, object]:
    """What an operator would do: replay the golden image's event log and allow exactly its PCRs."""
    golden = parse_event_log(write_event_log(boot_events(), BANKS)).replay()[HashAlg.SHA256]
    return {
        "device_classes": {
            DEVICE_CLASS: {
                "pcr_bank": "sha256",
                "pcrs": {i: [golden[i].hex()] for i in QUOTED_PCRS},
                "event_log": "required",
                "events": {
                    "require": [{"pcr": 7, "type": "EV_EFI_VARIABLE_DRIVER_CONFIG", "variable": "SecureBoot"}],
                },
            }
        }
    }


def _boot(tpm: SoftwareTPM, workdir: Path, *, tampered: bool) -> Path:
    events = boot_events(bootloader=b"shim+grub 15.8 (patched by an attacker)") if tampered else boot_events()
    with TPMDevice(tpm.tcti) as device:
        log = measure_boot(device, events, BANKS)
    path = workdir / "binary_bios_measurements"
    path.write_bytes(log)
    return path


def main() -> int:
    root = Path(".demo").resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    venv_bin = Path(sys.executable).parent
    started: list[subprocess.Popen[bytes]] = []
    tpms: list[SoftwareTPM] = []
    try:
        _say("== 1. Two edge devices with software TPMs (swtpm), EK certificates from a local manufacturer CA")
        factory = SoftwareTPMFactory(root / "tpms")
        good, bad = factory.start("gw-01"), factory.start("gw-02")
        tpms += [good, bad]
        ek_roots = root / "ek-roots"
        ek_roots.mkdir()
        shutil.copy(factory.root_cert_path, ek_roots / "swtpm-localca-root.pem")
        shutil.copy(factory.issuer_cert_path, ek_roots / "swtpm-localca-intermediate.pem")
        _say(f"   gw-01 TPM at {good.tcti}; gw-02 TPM at {bad.tcti}")

        _say("== 2. Measured boot: gw-01 boots the golden image, gw-02 a tampered bootloader")
        logs = {}
        for name, tpm, tampered in (("gw-01", good, False), ("gw-02", bad, True)):
            (root / name).mkdir()
            logs[name] = _boot(tpm, root / name, tampered=tampered)
            _say(f"   {name}: {len(parse_event_log(logs[name].read_bytes()).events)} events in its TCG event log")

        _say("== 3. The operator's reference values, computed from the golden boot")
        refvalues = root / "reference-values.yaml"
        refvalues.write_text(yaml.safe_dump(reference_values_from_golden_boot(), sort_keys=False))
        _say(f"   {refvalues}: class {DEVICE_CLASS}, PCRs {list(QUOTED_PCRS)} (sha256), Secure Boot required")

        _say("== 4. trustd, the hub, on https://127.0.0.1 (SQLite store, SPIFFE CA under .demo/hub)")
        port = _free_port()
        hub_dir = root / "hub"
        env = {**os.environ, "TRUSTD_TRUST_DOMAIN": "edge.example"}
        started.append(
            subprocess.Popen(
                [
                    str(venv_bin / "trustd"),
                    "serve",
                    "--data-dir",
                    str(hub_dir),
                    "--ek-roots",
                    str(ek_roots),
                    "--reference-values",
                    str(refvalues),
                    "--port",
                    str(port),
                ],
                env=env,
            )
        )
        bundle = root / "hub-roots.pem"
        _wait_for_hub(port, hub_dir / "ca" / "ca.crt", started[-1])
        roots = subprocess.run(
            [str(venv_bin / "trustd"), "bundle", "--pem", "--data-dir", str(hub_dir)],
            capture_output=True,
            check=True,
            env=env,
        )
        bundle.write_bytes(roots.stdout)
        _say(f"   listening on 127.0.0.1:{port}; devices trust it through {bundle.name}")

        results = {}
        for name, tpm in (("gw-01", good), ("gw-02", bad)):
            _say(f"== 5. trustctl enroll on {name}")
            done = subprocess.run(
                [
                    str(venv_bin / "trustctl"),
                    "enroll",
                    "--server",
                    f"https://127.0.0.1:{port}",
                    "--ca-bundle",
                    str(bundle),
                    "--tpm",
                    tpm.tcti,
                    "--device-class",
                    DEVICE_CLASS,
                    "--site",
                    "lab",
                    "--node",
                    name,
                    "--event-log",
                    str(logs[name]),
                    "--out",
                    str(root / name / "svid"),
                    "--jwt-audience",
                    "spiffe://edge.example/hub",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            results[name] = done.returncode
            for line in (done.stdout + done.stderr).strip().splitlines():
                _say(f"   {line}")
            _say(f"   (exit code {done.returncode})")

        _say("== Summary")
        ok = results == {"gw-01": 0, "gw-02": 1}
        _say(f"   gw-01 enrolled: {results['gw-01'] == 0}; gw-02 refused: {results['gw-02'] == 1}")
        if ok:
            _say("   The identity went only to the device whose TPM proved a golden boot.")
        return 0 if ok else 1
    finally:
        for proc in started:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for tpm in tpms:
            tpm.stop()


def _wait_for_hub(port: int, ca_cert: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"trustd exited with {proc.returncode}")
        if ca_cert.exists():
            try:
                httpx.get(
                    f"https://127.0.0.1:{port}/healthz",
                    verify=ssl.create_default_context(cafile=str(ca_cert)),
                    timeout=1,
                ).raise_for_status()
                return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise SystemExit("trustd did not become ready within 30 s")


if __name__ == "__main__":
    raise SystemExit(main())
