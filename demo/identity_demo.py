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

from attestation.eventlog import parse_event_log
from attestation.tpm2.constants import HashAlg

os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss logs probes of absent NV indexes as errors

from attestation.device import TPMDevice
from demo.shell import command, note, run, say, start
from localpeers.simboot import boot_events, measure_boot
from localpeers.swtpm import SoftwareTPM, SoftwareTPMFactory

BANKS = (HashAlg.SHA256, HashAlg.SHA1)
DEVICE_CLASS = "edge-gateway"
OPERATOR = "spiffe://edge.example/operator/demo"
WORKLOAD = "spiffe://edge.example/workload/demo"
QUOTED_PCRS = (0, 4, 7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        say("== 1. Two edge devices with software TPMs (swtpm), EK certificates from a local manufacturer CA")
        note("swtpm_setup --tpm2 --create-ek-cert (a local manufacturer CA), then swtpm socket --tpm2, for each")
        factory = SoftwareTPMFactory(root / "tpms")
        good, bad = factory.start("gw-01"), factory.start("gw-02")
        tpms += [good, bad]
        ek_roots = root / "ek-roots"
        ek_roots.mkdir()
        shutil.copy(factory.root_cert_path, ek_roots / "swtpm-localca-root.pem")
        shutil.copy(factory.issuer_cert_path, ek_roots / "swtpm-localca-intermediate.pem")
        say(f"   gw-01 TPM at {good.tcti}; gw-02 TPM at {bad.tcti}")

        say("== 2. Measured boot: gw-01 boots the golden image, gw-02 a tampered bootloader")
        logs = {}
        note("a simulated firmware extends each boot event into the TPM's PCRs and writes the TCG event log")
        for name, tpm, tampered in (("gw-01", good, False), ("gw-02", bad, True)):
            (root / name).mkdir()
            logs[name] = _boot(tpm, root / name, tampered=tampered)
            say(f"   {name}: {len(parse_event_log(logs[name].read_bytes()).events)} events in its TCG event log")

        say("== 3. The operator's reference values, captured from the golden device (gw-01)")
        refvalues = root / "reference-values.yaml"
        pcrs = ",".join(str(p) for p in QUOTED_PCRS)
        run(
            [venv_bin / "trustctl", "refvalues", "capture", "--device-class", DEVICE_CLASS, "--tpm", good.tcti,
             "--event-log", logs["gw-01"], "--pcrs", pcrs, "--out", refvalues]
        )  # fmt: skip

        say("== 4. trustd, the hub, on https://127.0.0.1 (SQLite store, SPIFFE CA under .demo/hub)")
        port = _free_port()
        hub_dir = root / "hub"
        subprocess.run([venv_bin / "trustd", "ca", "init", "--data-dir", hub_dir, "--trust-domain", "edge.example"],
                       check=True, capture_output=True)  # fmt: skip
        started.append(
            start(
                [venv_bin / "trustd", "serve", "--data-dir", hub_dir, "--trust-domain", "edge.example",
                 "--ek-roots", ek_roots, "--reference-values", refvalues, "--listen", f"127.0.0.1:{port}",
                 "--operator", OPERATOR],
                log=root / "trustd.log",
            )
        )  # fmt: skip
        bundle = root / "hub-roots.pem"
        _wait_for_hub(port, hub_dir / "ca" / "ca.crt", started[-1])
        roots_argv: list[str | Path] = [venv_bin / "trustd", "bundle", "--pem", "--data-dir", hub_dir]
        command(roots_argv, suffix=f" > {bundle.relative_to(root.parent)}")
        roots = subprocess.run([str(a) for a in roots_argv], capture_output=True, check=True)
        bundle.write_bytes(roots.stdout)
        say(f"   listening on 127.0.0.1:{port}; devices trust it through {bundle.name}")

        results = {}
        for name, tpm in (("gw-01", good), ("gw-02", bad)):
            say(f"== 5. trustctl enroll on {name}")
            done = run(
                [venv_bin / "trustctl", "enroll", "--hub", f"https://127.0.0.1:{port}", "--ca-bundle", bundle,
                 "--tpm", tpm.tcti, "--device-class", DEVICE_CLASS, "--site", "lab", "--node", name,
                 "--event-log", logs[name], "--out", root / name / "svid", "--jwt-audience", "spiffe://edge.example/hub"]
            )  # fmt: skip
            results[name] = done.returncode

        agent_ok = False
        if results["gw-01"] == 0:
            agent_ok = _node_agent(root, venv_bin, f"https://127.0.0.1:{port}", bundle, hub_dir, good, logs, started)

        say("== Summary")
        ok = results == {"gw-01": 0, "gw-02": 1} and agent_ok
        say(f"   gw-01 enrolled: {results['gw-01'] == 0}; gw-02 refused: {results['gw-02'] == 1}")
        say(f"   a workload got its SVID through gw-01's agent, which renewed, then was revoked: {agent_ok}")
        if ok:
            say("   The identity went only to the device whose TPM proved a golden boot, and was taken back.")
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


def _node_agent(
    root: Path,
    venv_bin: Path,
    hub: str,
    bundle: Path,
    hub_dir: Path,
    tpm: SoftwareTPM,
    logs: dict[str, Path],
    started: list[subprocess.Popen[bytes]],
) -> bool:
    """gw-01's node agent: an entry, the Workload API for a workload (this process), a renewal, a revocation."""
    from spiffe import WorkloadApiClient

    say(f"== 6. the operator registers a workload on gw-01 (unix uid {os.getuid()})")
    operator_dir = root / "operator"
    mint: list[str | Path] = [
        venv_bin / "trustd",
        "svid",
        "mint",
        "--data-dir",
        hub_dir,
        "--trust-domain",
        "edge.example",
    ]
    run([*mint, "--spiffe-id", OPERATOR, "--ttl", "1h", "--out", operator_dir])
    operator = ["--hub", hub, "--ca-bundle", str(bundle), "--svid", str(operator_dir / "svid.pem")]
    operator += ["--svid-key", str(operator_dir / "svid.key")]
    node = "spiffe://edge.example/site/lab/node/gw-01"

    def trustctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return run([venv_bin / "trustctl", *argv])

    trustctl("fleet", "entry", "create", "--spiffe-id", WORKLOAD, "--parent", node, "--selector",
             f"unix:uid:{os.getuid()}", *operator)  # fmt: skip
    say("== 7. trustctl agent run on gw-01: the SPIFFE Workload API on a unix socket")
    socket_path = root / "gw-01" / "agent.sock"
    started.append(
        start(
            [venv_bin / "trustctl", "agent", "run", "--hub", hub, "--svid-dir", root / "gw-01" / "svid",
             "--socket", socket_path, "--state-dir", root / "gw-01" / "agent", "--tpm", tpm.tcti,
             "--event-log", logs["gw-01"], "--entry-poll", "1"],
            log=root / "gw-01" / "agent.log",
        )
    )  # fmt: skip
    note(f"a workload (this process) asks the Workload API at unix://{socket_path} with py-spiffe")
    fetched = None
    deadline = time.monotonic() + 20
    while fetched is None and time.monotonic() < deadline:
        if socket_path.exists():
            client = WorkloadApiClient(f"unix://{socket_path}", default_timeout=2)
            try:
                fetched = client.fetch_x509_svid()
                token = client.fetch_jwt_svid(audience={"spiffe://edge.example/api"})
            except Exception:  # noqa: BLE001 - the agent is still fetching its SVIDs
                time.sleep(0.3)
            finally:
                client.close()
        else:
            time.sleep(0.2)
    if fetched is None:
        say("   the workload got no SVID; see .demo/gw-01/agent.log")
        return False
    say(f"   py-spiffe fetch_x509_svid: {fetched.spiffe_id}, expires {fetched.leaf.not_valid_after_utc:%H:%M} UTC")
    say(f"   py-spiffe fetch_jwt_svid: {token.spiffe_id} for {sorted(token.audience)}")
    say("== 8. gw-01 renews its node SVID with a fresh quote; then the operator revokes gw-01")
    renewed = trustctl("agent", "renew", "--hub", hub, "--svid-dir", str(root / "gw-01" / "svid"), "--tpm",
                       tpm.tcti, "--event-log", str(logs["gw-01"]))  # fmt: skip
    revoked = trustctl("fleet", "revoke", "gw-01", "--reason", "demo: reported stolen", *operator)
    refused = trustctl("agent", "renew", "--hub", hub, "--svid-dir", str(root / "gw-01" / "svid"), "--tpm",
                       tpm.tcti, "--event-log", str(logs["gw-01"]))  # fmt: skip
    return renewed.returncode == 0 and revoked.returncode == 0 and refused.returncode == 1


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
