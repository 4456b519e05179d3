"""`edgetrust-admission serve` started wrong says so on one line with what to do, never with a traceback: OPA
not answering (exit 3, the command that starts it), a policy OPA refuses (exit 1), a certificate that is not
there (exit 2). And OPA started after the webhook (a Helm sidecar starts at the same time) is waited for."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from localpeers.hub import free_port
from localpeers.opa_server import opa_server
from localpeers.processes import running
from localpeers.tlsca import TestCA
from localpeers.webhook import policy_dir

ADMISSION = str(Path(sys.executable).parent / "edgetrust-admission")
BROKEN_REGO = "package edgetrust.admission.broken\n\nimport rego.v1\n\nviolation contains msg if {\n"


def _argv(tmp_path: Path, opa_port: int, *extra: str, policies: Path | None = None) -> list[str]:
    cert = TestCA(tmp_path / "ca").issue("webhook")
    policies = policies or policy_dir(tmp_path / "policies")
    return [
        ADMISSION, "serve", "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(cert.cert),
        "--tls-key", str(cert.key), "--policy-dir", str(policies), "--opa-port", str(opa_port), *extra,
    ]  # fmt: skip


def _refusal(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    err = done.stderr.decode()
    assert "Traceback" not in err, err
    return done.returncode, err


def test_opa_not_answering_is_one_line_naming_the_command_that_starts_it(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    code, err = _refusal(_argv(tmp_path, port, "--opa-wait", "2"))
    assert code == 3, err
    assert time.monotonic() - started < 30  # the bounded wait, not forever
    last = err.strip().splitlines()[-1]
    assert last == (
        f"edgetrust-admission: OPA is not answering at http://127.0.0.1:{port} (start it: opa run --server "
        f"--addr 127.0.0.1:{port} --v0-compatible; or give --opa-port)"
    ), err
    assert len([line for line in err.splitlines() if "edgetrust-admission:" in line]) == 1, err


def test_a_policy_opa_refuses_stops_the_start_on_one_line(tmp_path: Path) -> None:
    policies = policy_dir(tmp_path / "policies", extra={"broken": {"files": {"broken.rego": BROKEN_REGO}}})
    with opa_server(tmp_path / "opa") as opa:
        code, err = _refusal(_argv(tmp_path, opa.port, policies=policies))
    assert code == 1, err
    assert err.strip().splitlines()[-1].startswith("edgetrust-admission: policy broken: OPA refused it:"), err


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with opa_server(tmp_path / "opa") as opa, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = _argv(tmp_path, opa.port)
        argv[argv.index("--listen") + 1] = f"127.0.0.1:{taken.getsockname()[1]}"
        code, err = _refusal(argv)
    assert code == 2, err
    assert err.strip().splitlines()[-1].endswith("give another --listen)"), err
    assert "address already in use" in err.lower(), err


def test_a_missing_certificate_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    with opa_server(tmp_path / "opa") as opa:
        argv = _argv(tmp_path, opa.port)
        argv[argv.index("--tls-cert") + 1] = str(tmp_path / "nowhere.pem")
        code, err = _refusal(argv)
    assert code == 2, err
    assert "nowhere.pem" in err, err


def test_opa_started_after_the_webhook_is_waited_for(tmp_path: Path) -> None:
    opa_port = free_port()
    argv = _argv(tmp_path, opa_port, "--opa-wait", "40")
    url = f"https://{argv[argv.index('--listen') + 1]}/readyz"
    context = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))

    def ready() -> bool:
        return httpx.get(url, verify=context, timeout=1).status_code == 200

    log = tmp_path / "webhook.log"
    with log.open("wb") as out:
        webhook = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "waiting for OPA at http://127.0.0.1:" not in log.read_text():  # said while it waits
            assert webhook.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with opa_server(tmp_path / "opa", port=opa_port), running(["sleep", "60"], ready=ready, log=tmp_path / "x"):
            assert webhook.poll() is None, log.read_text()
    finally:
        webhook.terminate()
        webhook.wait(timeout=20)
