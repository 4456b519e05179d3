"""`--log-format json` on every daemon, each started as a real process: `trustd serve`, `trustctl agent run`,
`edgetrust-admission serve` and `edgetrust-syncer run` write JSON lines (time, level, logger, message) on
stderr, and nothing else; a fatal start-up error is one such line too."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from localpeers.hub import free_port, hub_process
from localpeers.tlsca import TestCA

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON log line (a line that is not one fails the test)."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            found = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}\n--- all of it:\n{text[-3000:]}")
        assert {"time", "level", "logger", "message"} <= set(found), line
        lines.append(found)
    return lines


def _wait_for(process: subprocess.Popen[bytes], log: Path, needle: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        if needle in text:
            return text
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before logging {needle!r}:\n{text[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"no {needle!r} logged within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_trustd_serve_logs_json_lines(tmp_path: Path) -> None:
    ek_roots = tmp_path / "ek-roots"
    ek_roots.mkdir()
    (ek_roots / "vendor.pem").write_bytes(TestCA(tmp_path / "ek-ca").ca_file.read_bytes())
    with hub_process(tmp_path, ek_roots=ek_roots, extra_args=("--log-format", "json")):
        pass  # started, answered /healthz, stopped
    lines = _json_lines((tmp_path / "trustd.log").read_text())
    assert any(line["message"].startswith("trustd serving trust domain edge.example") for line in lines), lines


def test_trustd_fatal_start_error_is_one_json_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(BIN / "trustd"),
            "serve",
            "--log-format",
            "json",
            "--data-dir",
            str(tmp_path / "data"),
            "--ek-roots",
            str(tmp_path / "no-such-dir"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    (line,) = _json_lines(done.stderr.decode())
    assert line["level"] == "ERROR"
    assert line["logger"] == "trustd"
    assert "does not exist" in line["message"]


def test_admission_serve_with_a_bad_policy_dir_exits_with_one_json_line(tmp_path: Path) -> None:
    cert = TestCA(tmp_path / "ca").issue("webhook")
    done = subprocess.run(
        [
            str(BIN / "edgetrust-admission"),
            "serve",
            "--log-format",
            "json",
            "--listen-port",
            str(free_port()),
            "--tls-cert",
            str(cert.cert),
            "--tls-key",
            str(cert.key),
            "--policy-dir",
            str(tmp_path / "polcies"),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    (line,) = _json_lines(done.stderr.decode())
    assert line["level"] == "ERROR"
    assert line["logger"] == "edgetrust-admission"
    assert "does not exist" in line["message"]


def test_syncer_run_logs_json_lines(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    svid = ca.issue("cluster", client=True, uris=("spiffe://edge.example/cluster/c1",))
    token = tmp_path / "token"
    token.write_text("not-a-real-token")
    publisher = tmp_path / "ci-1.pem"
    publisher.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    done = subprocess.run(
        [
            str(BIN / "edgetrust-syncer"),
            "run",
            "--log-format",
            "json",
            "--once",
            "--hub",
            f"https://127.0.0.1:{free_port()}",
            "--ca-bundle",
            str(ca.ca_file),
            "--svid",
            str(svid.cert),
            "--svid-key",
            str(svid.key),
            "--cluster",
            "c1",
            "--group",
            "g",
            "--site-class",
            "edge",
            "--state-dir",
            str(tmp_path / "state"),
            "--kube-url",
            f"https://127.0.0.1:{free_port()}",
            "--kube-token-file",
            str(token),
            "--kube-ca-file",
            str(ca.ca_file),
            "--verification-key",
            str(publisher),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3  # the hub is not there: unreachable (exit 3, as every CLI says it)
    lines = _json_lines(done.stderr.decode())
    assert any(line["message"].startswith("sync: hub unreachable: ") for line in lines), lines
    assert "not-a-real-token" not in done.stderr.decode()


def test_trustctl_agent_run_logs_json_lines(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    node = ca.issue("node", client=True, uris=("spiffe://edge.example/site/s1/node/n1",))
    svid_dir = tmp_path / "svid"
    svid_dir.mkdir(mode=0o700)
    (svid_dir / "svid.pem").write_bytes(node.cert.read_bytes())
    (svid_dir / "svid.key").write_bytes(node.key.read_bytes())
    (svid_dir / "bundle.pem").write_bytes(ca.ca_file.read_bytes())
    log = tmp_path / "agent.log"
    argv = [str(BIN / "trustctl"), "agent", "run", "--log-format", "json", "--hub", f"https://127.0.0.1:{free_port()}"]
    argv += ["--svid-dir", str(svid_dir), "--socket", str(tmp_path / "api.sock"), "--state-dir", str(tmp_path / "st")]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        text = _wait_for(process, log, "retrying in")  # served, then the hub was not there: backing off
    finally:
        _stop(process)
    lines = _json_lines(text)
    assert any(line["message"].startswith("Workload API on unix://") for line in lines), lines
    assert any("keeping the identities held" in line["message"] for line in lines), lines
