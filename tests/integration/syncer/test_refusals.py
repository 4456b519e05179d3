"""A hub that refuses a cluster is reported as a refusal with the hub's reason, never as "unreachable": a
cluster not in the fleet file and a revoked one make `edgetrust-syncer run --once` exit 1 with one line
naming the reason and the SPIFFE ID to check, `status` shows the same; without --once the syncer keeps going
(the operator may fix the fleet file). A stopped hub is "hub unreachable", exit 3."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from localpeers.hub import running_policy_hub
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from tests.support.https_stub import QuietHandler, serving_https
from tests.support.two_sites import FLEET, OPERATOR
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration

SYNCER = str(Path(sys.executable).parent / "edgetrust-syncer")


def _argv(hub: str, roots: Path, svid: tuple[Path, Path], cluster: str, work: Path, *extra: str) -> list[str]:
    token = work / "token"
    token.write_text("unused: a refused sync never reaches the API server")
    publisher = work / "ci-1.pem"
    publisher.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return [
        SYNCER, "run", "--hub", hub, "--ca-bundle", str(roots), "--svid", str(svid[0]),
        "--svid-key", str(svid[1]), "--cluster", cluster, "--group", "all", "--site-class", "edge-store",
        "--state-dir", str(work / f"state-{cluster}"), "--kube-url", "https://127.0.0.1:9",
        "--kube-token-file", str(token), "--kube-ca-file", str(roots), "--wait", "1",
        "--verification-key", str(publisher), *extra,
    ]  # fmt: skip


def _once(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run([*argv, "--once"], capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr.strip().splitlines()[-1]


def _status(work: Path, cluster: str) -> tuple[int, str]:
    done = subprocess.run(
        [SYNCER, "status", "--state-dir", str(work / f"state-{cluster}")], capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout + done.stderr


def test_a_cluster_the_hub_refuses_is_told_refused_with_the_hubs_reason(tmp_path: Path) -> None:
    public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with running_policy_hub(tmp_path / "hub", fleet=FLEET, publisher_keys={"ci-1": public}) as hub:
        stranger_id = "spiffe://edge.example/cluster/stranger"
        stranger = issue_svid_files(hub.hub.ca, stranger_id, tmp_path / "stranger")
        code, line = _once(_argv(hub.url, hub.ca_bundle, stranger, "stranger", tmp_path))
        assert code == 1, line
        assert line.startswith("edgetrust-syncer: the hub refused this cluster: "), line
        assert "unreachable" not in line, line
        assert line.endswith(f"is {stranger_id} in the fleet file, or revoked? (trustctl fleet list)"), line
        status_code, status = _status(tmp_path, "stranger")
        assert status_code == 1, status
        assert "source-refused: the hub refused this cluster: " in status, status

        # without --once: refused, said, and still running (at the backoff's pace), not dead
        log = tmp_path / "stranger.log"
        with log.open("wb") as out:
            running = subprocess.Popen(
                _argv(hub.url, hub.ca_bundle, stranger, "stranger", tmp_path), stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 30
            while log.read_text().count("the hub refused this cluster") < 2:
                assert running.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert running.poll() is None, log.read_text()
        finally:
            running.terminate()
            running.wait(timeout=20)
        assert "Traceback" not in log.read_text()

        # a revoked cluster: the hub's reason says so
        site_b = issue_svid_files(hub.hub.ca, "spiffe://edge.example/cluster/site-b", tmp_path / "site-b")
        operator = issue_svid_files(hub.hub.ca, OPERATOR, tmp_path / "operator")
        tls = ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(operator[0])]
        revoke = ["fleet", "revoke", "spiffe://edge.example/cluster/site-b", "--reason", "stolen"]
        assert trustctl([*revoke, *tls, "--svid-key", str(operator[1])]) == 0
        code, line = _once(_argv(hub.url, hub.ca_bundle, site_b, "site-b", tmp_path))
        assert code == 1, line
        assert "the hub refused this cluster: spiffe://edge.example/cluster/site-b is revoked" in line, line

    # the hub stopped: unreachable, exit 3, and not a refusal
    code, line = _once(_argv(hub.url, hub.ca_bundle, site_b, "site-b", tmp_path))
    assert code == 3, line
    assert line.startswith("edgetrust-syncer: hub unreachable: "), line
    status_code, status = _status(tmp_path, "site-b")
    assert status_code == 3, status
    assert "unreachable" in status, status


class _Answering(QuietHandler):
    status = 503
    body = b'{"error": "store_unavailable", "reason": "the store is being migrated"}'
    headers_out: ClassVar[dict[str, str]] = {"Retry-After": "7"}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send(self.status, self.body, self.headers_out)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send(self.status, self.body, self.headers_out)


class _NothingPublished(_Answering):
    status = 404
    body = b'{"error": "no_rollout", "reason": "nothing published to \'all\'"}'
    headers_out: ClassVar[dict[str, str]] = {}


def test_503_is_unreachable_with_the_hubs_retry_after_and_404_a_bad_request(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    cert = ca.issue("cluster", client=True, uris=("spiffe://edge.example/cluster/c1",))
    for handler, code, said in (
        (
            _Answering,
            3,
            "hub unreachable: trustd is unavailable for the bundle poll (/v1/policy/bundle) (503): "
            "the store is being migrated; retry after 7 s",
        ),
        (_NothingPublished, 1, "hub refused the request (hub_bad_request): trustd refused the bundle poll"),
    ):
        with serving_https(handler, ca.issue("hub")) as port:
            got, line = _once(_argv(f"https://127.0.0.1:{port}", ca.ca_file, (cert.cert, cert.key), "c1", tmp_path))
        assert got == code, line
        assert said in line, line
