"""The daemons started with a bad setting say so on one stderr line naming the flag (or file) and what to do,
with the right exit code, never a traceback: `trustd serve`, `edgetrust-syncer run`, `trustctl agent run`
(the webhook's own: tests/integration/admission/test_startup_errors.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from localpeers.hub import free_port, golden_reference_values
from localpeers.tlsca import TestCA

BIN = Path(sys.executable).parent


def _one_line(argv: list[str], code: int, *expected: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, "nothing said on stderr"
    for text in expected:
        assert text in lines[-1], done.stderr
    return lines[-1]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


def test_trustd_serve_bad_settings(tmp_path: Path, taken_port: int) -> None:
    ek = tmp_path / "ek-roots"
    ek.mkdir()
    refvalues = tmp_path / "reference-values.yaml"

    def serve(*extra: str, roots: Path = ek) -> list[str]:
        argv = [str(BIN / "trustd"), "serve", "--data-dir", str(tmp_path / "data"), "--ek-roots", str(roots)]
        return [*argv, "--reference-values", str(refvalues), "--trust-domain", "retail.example", *extra]

    port = ["--listen", f"127.0.0.1:{free_port()}"]
    _one_line(
        serve(*port, roots=tmp_path / "nowhere"), 1, "EK roots directory", "nowhere", "does not exist", "--ek-roots"
    )
    _one_line(serve(*port), 1, "no EK manufacturer roots configured", "(--ek-roots DIR")
    (ek / "vendor.pem").write_bytes(TestCA(tmp_path / "vendor").ca_file.read_bytes())
    _one_line(serve(*port), 1, "cannot read reference values", str(refvalues), "trustctl refvalues capture")
    refvalues.write_text("pcrs: [")
    _one_line(serve(*port), 1, str(refvalues), "not valid YAML")
    refvalues.write_text(yaml.safe_dump({"classes": 5}))
    _one_line(serve(*port), 1, str(refvalues))
    refvalues.write_text(yaml.safe_dump(golden_reference_values()))
    _one_line(serve(*port), 1, "no trust material", "trustd ca init")  # never a root of its own
    init = [str(BIN / "trustd"), "ca", "init", "--data-dir", str(tmp_path / "data"), "--trust-domain", "retail.example"]
    subprocess.run(init, check=True, capture_output=True, timeout=60)
    _one_line(
        serve("--listen", f"127.0.0.1:{taken_port}"), 2, f"--listen 127.0.0.1:{taken_port}", "give another --listen"
    )


def test_syncer_run_bad_settings(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    svid = ca.issue("cluster", client=True, uris=("spiffe://edge.example/cluster/c1",))
    publisher = tmp_path / "ci-1.pem"
    publisher.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = tmp_path / "token"
    token.write_text("t")
    hub = ["--hub", f"https://127.0.0.1:{free_port()}", "--ca-bundle", str(ca.ca_file)]
    cluster = ["--cluster", "c1", "--group", "g", "--site-class", "s", "--once"]
    kube = ["--kube-url", "https://127.0.0.1:9", "--kube-token-file", str(token), "--kube-ca-file", str(ca.ca_file)]

    def run(
        *, key: Path = publisher, cert: Path = svid.cert, state: Path = tmp_path / "state", kube_args: list[str] = kube
    ) -> list[str]:
        argv = [str(BIN / "edgetrust-syncer"), "run", *hub, "--svid", str(cert), "--svid-key", str(svid.key)]
        return [*argv, *cluster, "--state-dir", str(state), "--verification-key", str(key), *kube_args]

    no_keys = [a for a in run() if a not in ("--verification-key", str(publisher))]
    _one_line(no_keys, 2, "no --verification-key", "give the publisher's public key")
    _one_line(run(cert=tmp_path / "nowhere.pem"), 2, "--svid ", "nowhere.pem", "this cluster's X.509-SVID")
    no_token = run(kube_args=["--kube-url", "https://127.0.0.1:9", "--kube-ca-file", str(ca.ca_file)])
    _one_line(no_token, 2, "--kube-token-file", "outside a pod give --kube-url")
    (tmp_path / "a-file").write_text("")
    _one_line(run(state=tmp_path / "a-file"), 2, "--state-dir", "give a writable directory")
    _one_line(run(key=ca.ca_file), 2, "--verification-key", "not a PEM public key")
    _one_line(run(), 3, "hub unreachable: ")


def test_trustctl_agent_run_bad_settings(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    agent = [str(BIN / "trustctl"), "agent", "run", "--hub", f"https://127.0.0.1:{free_port()}"]
    agent += ["--state-dir", str(tmp_path / "state"), "--socket"]
    svid_dir = tmp_path / "svid"
    _one_line([*agent, str(tmp_path / "api.sock"), "--svid-dir", str(svid_dir)], 2, "enroll first: trustctl enroll")
    svid_dir.mkdir(mode=0o700)
    not_svid = ca.issue("not-an-svid")  # no spiffe:// URI
    (svid_dir / "svid.pem").write_bytes(not_svid.cert.read_bytes())
    (svid_dir / "svid.key").write_bytes(not_svid.key.read_bytes())
    (svid_dir / "bundle.pem").write_bytes(ca.ca_file.read_bytes())
    _one_line([*agent, str(tmp_path / "api.sock"), "--svid-dir", str(svid_dir)], 2, "not an X.509-SVID", "enroll first")
    node = ca.issue("node", client=True, uris=("spiffe://edge.example/site/s1/node/n1",))
    (svid_dir / "svid.pem").write_bytes(node.cert.read_bytes())
    (svid_dir / "svid.key").write_bytes(node.key.read_bytes())
    squatted = tmp_path / "not-a-socket"
    squatted.write_text("")
    _one_line([*agent, str(squatted), "--svid-dir", str(svid_dir)], 1, "is not a socket; refusing to replace it")
