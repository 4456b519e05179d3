"""A hostile "hub" (or anything answering at the hub's URL with a certificate the client trusts) chooses the
words of its refusal. They are repeated to a person, so they must not forge a log line (a newline), drive the
terminal (escape sequences) or flood the log (megabytes of reason): the syncer and trustctl say the refusal on
one line, printable, bounded, and still as a refusal (exit 1), never as "unreachable"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from localpeers.tlsca import TestCA
from tests.support.https_stub import QuietHandler, serving_https

BIN = Path(sys.executable).parent
FORGED = "2026-12-01 11:00:00,000 INFO edgetrust.syncer: sync: applied 999999999999-forged"
HOSTILE = {
    "error": "caller_not_allowed\x1b[31m",
    "reason": f"not in the fleet\n{FORGED}\r\x1b]0;owned\x07\x1b[2J" + "A" * 200_000,
}


class Refusing(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send(403, json.dumps(HOSTILE).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send(403, json.dumps(HOSTILE).encode())


def _said(done: subprocess.CompletedProcess[str]) -> str:
    err = done.stderr
    for control in ("\x1b", "\x07", "\r"):
        assert control not in err, repr(err[:300])
    assert len(err) < 8_000, f"{len(err)} characters of stderr: the hub's reason was not bounded"
    for line in err.splitlines():  # the forged log line never stands on a line of its own
        assert not line.startswith(FORGED), line
    return err


def test_a_hostile_refusal_is_one_printable_bounded_line(tmp_path: Path) -> None:
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
    with serving_https(Refusing, ca.issue("hub")) as port:
        hub = ["--hub", f"https://127.0.0.1:{port}", "--ca-bundle", str(ca.ca_file)]
        tls = ["--svid", str(svid.cert), "--svid-key", str(svid.key)]
        synced = subprocess.run(
            [
                str(BIN / "edgetrust-syncer"), "run", "--once", *hub, *tls, "--cluster", "c1", "--group", "g",
                "--site-class", "s", "--state-dir", str(tmp_path / "state"), "--verification-key", str(publisher),
                "--kube-url", "https://127.0.0.1:9", "--kube-token-file", str(token), "--kube-ca-file", str(ca.ca_file),
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        listed = subprocess.run(
            [str(BIN / "trustctl"), "fleet", "list", *hub, *tls],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    err = _said(synced)
    assert synced.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("edgetrust-syncer: the hub refused this cluster: not in the fleet?"), last
    assert "more characters)" in last, last  # the cut is said
    assert "unreachable" not in last, last
    status = json.loads((tmp_path / "state" / "last-sync.json").read_text())
    assert "\x1b" not in status["message"]
    assert len(status["message"]) < 2_000
    err = _said(listed)
    assert listed.returncode == 1, err
    assert err.count("\n") == 1, err  # one line
    assert "trustd refused the fleet list (403 caller_not_allowed?[31m): not in the fleet?" in err, err
