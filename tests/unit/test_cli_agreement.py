"""The four command lines agree: every parser of every command is walked, and a few real runs check stderr and
the exit codes (0 ok, 1 refused or failed check, 2 usage, 3 unreachable; edgetrust/_internal/cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetrust._internal.cli import listen_of

BIN = Path(sys.executable).parent

#: commands that talk to the hub
TALKS_TO_HUB = {
    "trustctl enroll",
    "trustctl fleet list",
    "trustctl fleet revoke",
    "trustctl fleet entry create",
    "trustctl fleet entry list",
    "trustctl fleet entry delete",
    "trustctl fleet cluster add",
    "trustctl policy publish",
    "trustctl policy rollout status",
    "trustctl policy rollback",
    "trustctl agent run",
    "trustctl agent renew",
    "edgetrust-syncer run",
    "edgetrust-admission serve",  # its status reports (with --hub)
}
#: daemons: they log, they print no result
DAEMONS = {"trustd serve", "trustctl agent run", "edgetrust-admission serve", "edgetrust-syncer run"}
OTHERS = {
    "trustd bundle",
    "trustd ca init",
    "trustd ca prepare",
    "trustd ca activate",
    "trustd ca status",
    "trustd svid mint",
    "trustctl policy test",
    "trustctl fleet check",
    "trustctl policy build",
    "trustctl policy sign",
    "trustctl policy push",
    "trustctl agent status",
    "trustctl svid show",
    "trustctl refvalues capture",
    "trustctl refvalues check",
    "edgetrust-syncer status",
}
#: other spellings of the hub, the verification keys and the listen address: accepted, never shown
HIDDEN = {"--server", "--policy-keys", "--bundle-key", "--host", "--port", "--listen-host", "--listen-port"}
#: options that name a key but are not publishers' verification keys (a signing key, the SVID's, the hub's
#: revocation-signing key, the serving key, a key id)
OTHER_KEYS = {"--key", "--key-id", "--svid-key", "--tls-key", "--revocation-key"}
#: ports that are not this command's listen address (the OPA sidecar it calls; the agent's metrics, on
#: 127.0.0.1 only by design)
OTHER_PORTS = {"--opa-port", "--metrics-port"}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from admission.cli import _parser as admission
    from syncer.cli import _parser as syncer
    from trustd.cli.server import _parser as trustd
    from trustd.cli.trustctl import _parser as trustctl

    parsers: dict[str, argparse.ArgumentParser] = {"trustd": trustd(), "trustctl": trustctl()}
    return {**parsers, "edgetrust-admission": admission(), "edgetrust-syncer": syncer()}


def _walk(path: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _walk(f"{path} {name}", child)


def _commands() -> dict[str, argparse.ArgumentParser]:
    return {path: parser for prog, root in _parsers().items() for path, parser in _walk(prog, root)}


def _visible(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def _all(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_every_command_is_classified() -> None:
    assert set(_commands()) == TALKS_TO_HUB | DAEMONS | OTHERS


def test_a_command_that_talks_to_the_hub_has_hub_and_no_other_does() -> None:
    for path, parser in _commands().items():
        assert ("--hub" in _visible(parser)) == (path in TALKS_TO_HUB), path


def test_no_other_spelling_of_the_hub_the_keys_or_the_listen_address_is_visible() -> None:
    for path, parser in _commands().items():
        visible = _visible(parser)
        assert not visible & HIDDEN, (path, visible & HIDDEN)
        for option in visible:
            if "key" in option:
                assert option == "--verification-key" or option in OTHER_KEYS, (path, option)
            if "listen" in option or option.endswith("-port"):
                assert option == "--listen" or option in OTHER_PORTS, (path, option)


def test_every_command_that_prints_a_result_has_json() -> None:
    for path, parser in _commands().items():
        assert ("--json" in _visible(parser)) == (path not in DAEMONS), path


def test_the_old_spellings_still_parse_as_the_new_ones() -> None:
    commands = _commands()
    assert "--server" in _all(commands["trustctl enroll"])
    enroll = ["enroll", "--tpm", "swtpm:", "--ca-bundle", "r.pem", "--device-class", "gw"]
    old = _parsers()["trustctl"].parse_args([*enroll, "--server", "https://hub:8443"])
    assert old.hub == "https://hub:8443"
    trustd = _parsers()["trustd"]
    assert listen_of(trustd.parse_args(["serve", "--host", "0.0.0.0", "--port", "9443"])) == ("0.0.0.0", 9443)
    assert listen_of(trustd.parse_args(["serve", "--listen", "[::1]:9443"])) == ("::1", 9443)
    assert trustd.parse_args(["serve", "--policy-keys", "keys/"]).verification_keys == ["keys/"]
    webhook = _parsers()["edgetrust-admission"].parse_args(
        ["serve", "--listen-host=0.0.0.0", "--listen-port=8443", "--bundle-key=ci=ci.pem", "--verification-key=k/"]
    )
    assert listen_of(webhook) == ("0.0.0.0", 8443)
    assert webhook.verification_keys == ["ci=ci.pem", "k/"]


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def _one_line(stderr: str, prog: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: "), stderr


def test_a_usage_error_is_one_stderr_line_and_exit_2() -> None:
    missing = _run("trustctl", "fleet", "list")
    assert missing.returncode == 2
    assert missing.stdout == ""
    _one_line(missing.stderr, "trustctl fleet list")
    assert "--hub" in missing.stderr
    bad_listen = _run("trustd", "serve", "--listen", "nowhere")
    assert bad_listen.returncode == 2
    _one_line(bad_listen.stderr, "trustd serve")
    plain = _run("trustctl", "enroll", "--hub", "http://hub:8443", "--tpm", "swtpm:", "--ca-bundle", "r.pem")
    assert plain.returncode == 2
    _one_line(plain.stderr, "trustctl enroll")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the test connects: nothing listens there


def test_an_unreachable_hub_is_exit_3_with_one_stderr_line(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    hub = f"https://127.0.0.1:{_closed_port()}"
    tls = ("--ca-bundle", str(cert), "--svid", str(cert), "--svid-key", str(key))
    listed = _run("trustctl", "fleet", "list", "--hub", hub, *tls)
    assert listed.returncode == 3, listed.stderr
    assert listed.stdout == ""
    _one_line(listed.stderr, "trustctl fleet list")
    assert "cannot reach trustd" in listed.stderr
    status = _run("trustctl", "policy", "rollout", "status", "gateways", "--hub", hub, *tls, "--json")
    assert status.returncode == 3, status.stderr
    _one_line(status.stderr, "trustctl policy rollout")

    token = tmp_path / "token"
    token.write_text("t")
    publisher = tmp_path / "ci-1.pem"
    publisher.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    synced = _run(
        "edgetrust-syncer", "run", "--hub", hub, *tls, "--cluster", "c", "--group", "g", "--site-class", "s",
        "--state-dir", str(tmp_path / "state"), "--kube-token-file", str(token), "--kube-ca-file", str(cert),
        "--kube-url", f"https://127.0.0.1:{_closed_port()}", "--once", "--verification-key", str(publisher),
    )  # fmt: skip
    assert synced.returncode == 3, synced.stderr
    assert "unreachable" in synced.stderr


def test_a_refused_check_is_exit_1_and_a_missing_file_exit_2_on_stderr(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path)
    not_an_svid = _run("trustctl", "svid", "show", str(cert))
    assert not_an_svid.returncode == 1
    assert not_an_svid.stdout == ""
    _one_line(not_an_svid.stderr, "trustctl svid show")
    missing = _run("trustctl", "svid", "show", str(tmp_path / "nothing.pem"), "--json")
    assert missing.returncode == 2
    _one_line(missing.stderr, "trustctl svid show")


#: what a device, or a node agent's first look at its help, must not load: the hub's, the webhook's and the
#: policy tooling's dependencies
SERVER_ONLY = ("fastapi", "psycopg", "sigstore", "opa_client", "kubernetes")


@pytest.mark.parametrize("argv", [["enroll", "--help"], ["agent", "run", "--help"]])
def test_trustctl_help_on_a_device_imports_no_server_dependency(argv: list[str]) -> None:
    probe = (
        "import json, sys\n"
        "from trustd.cli.trustctl import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert "usage: trustctl" in done.stdout
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    heavy = sorted(m for m in loaded if m.split(".")[0] in SERVER_ONLY)
    assert heavy == [], heavy
