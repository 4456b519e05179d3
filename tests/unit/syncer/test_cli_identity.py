"""Which identity `edgetrust-syncer run` uses: the Workload API by default, the Secret-held files only when both
--svid and --svid-key are given; an ambiguous or half-given choice is a usage error before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust._internal.cli import EXIT_USAGE
from edgetrust.spiffe.workload import SOCKET_ENV, WorkloadSvidError, socket_address
from syncer.cli import main


def base(tmp_path: Path) -> list[str]:
    key = tmp_path / "ci-1.pem"
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    key.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for name in ("ca.pem", "token", "kube-ca.pem", "svid.pem", "svid.key"):
        (tmp_path / name).write_text("x")
    argv = ["run", "--hub", "https://127.0.0.1:1", "--ca-bundle", str(tmp_path / "ca.pem"), "--cluster", "c"]
    argv += ["--group", "g", "--site-class", "s", "--verification-key", f"ci-1={key}"]
    argv += ["--kube-url", "https://127.0.0.1:2", "--kube-token-file", str(tmp_path / "token")]
    return [*argv, "--kube-ca-file", str(tmp_path / "kube-ca.pem"), "--state-dir", str(tmp_path / "state")]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--svid", "svid.pem"], "--svid and --svid-key go together"),
        (["--svid-key", "svid.key"], "--svid and --svid-key go together"),
        (["--svid", "svid.pem", "--svid-key", "svid.key", "--spiffe-socket", "/run/a.sock"], "not both"),
    ],
)
def test_an_ambiguous_identity_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    extra = [str(tmp_path / a) if a.startswith("svid.") else a for a in extra]
    assert main([*base(tmp_path), *extra]) == EXIT_USAGE
    assert expected in capsys.readouterr().err


def test_without_a_socket_or_the_fallback_it_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SOCKET_ENV, raising=False)
    assert main(base(tmp_path)) == EXIT_USAGE
    assert SOCKET_ENV in capsys.readouterr().err


def test_the_socket_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOCKET_ENV, "unix:///run/spiffe/api.sock")
    assert socket_address(None) == "unix:///run/spiffe/api.sock"
    assert socket_address("/run/other.sock") == "unix:///run/other.sock"
    monkeypatch.delenv(SOCKET_ENV)
    with pytest.raises(WorkloadSvidError):
        socket_address("")
