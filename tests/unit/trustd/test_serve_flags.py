"""Every setting of `trustd serve` is a flag whose help names its environment variable: walked from
TrustdSettings' fields, so a new setting without a flag fails here. The flags set the settings (durations in
90s/30m/8h/7d, lists repeatable), the old spellings still parse, and a flag wins over the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trustd.cli.serve_flags import env_var, flag_of, parse_duration, settings_from
from trustd.cli.server import _parser
from trustd.server.settings import TrustdSettings

BIN = Path(sys.executable).parent


def _help() -> dict[str, str]:
    """`trustd serve --help` as the real command prints it: each option's text, its lines joined."""
    done = subprocess.run(
        [str(BIN / "trustd"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "1000"},
    )
    lines: dict[str, str] = {}
    current = ""
    for line in done.stdout.split("options:", 1)[1].splitlines():
        stripped = line.strip()
        if line.startswith("  -"):  # an option's first line; its help follows, indented further
            current = stripped.split()[0].rstrip(",")
            lines[current] = stripped
        elif current and stripped:
            lines[current] += " " + stripped
    return lines


def test_every_setting_has_a_flag_whose_help_ends_with_its_env_var() -> None:
    lines = _help()
    for name, info in TrustdSettings.model_fields.items():
        assert info.description, f"TrustdSettings.{name} has no Field(description=...): the flag's help"
        flag = flag_of(name)
        assert flag in lines, f"TrustdSettings.{name}: no {flag} in trustd serve --help"
        assert env_var(name) in lines[flag], (name, lines[flag])
        assert re.search(r"\(env TRUSTD_[A-Z0-9_, ]+\)$", lines[flag]), lines[flag]


def test_the_flags_set_the_settings(tmp_path: Path) -> None:
    argv = [
        "serve",
        "--svid-ttl", "8h",
        "--jwt-svid-ttl", "90s",
        "--challenge-ttl", "120",
        "--header-timeout", "2.5s",
        "--dns-name", "hub.retail.example",
        "--dns-name", "localhost",
        "--ip", "10.0.0.5",
        "--operator", "spiffe://retail.example/operator/alice",
        "--max-connections", "64",
        "--spiffe-id-template", "/store/{site}/node/{node}",
        "--tls-cert", str(tmp_path / "c.pem"),
        "--tls-key", str(tmp_path / "k.pem"),
        "--data-dir", str(tmp_path),
    ]  # fmt: skip
    settings = settings_from(_parser().parse_args(argv))
    assert settings.svid_ttl_s == 8 * 3600
    assert settings.jwt_svid_ttl_s == 90
    assert settings.challenge_ttl_s == 120
    assert settings.header_timeout_s == 2.5
    assert settings.server_dns_names == ("hub.retail.example", "localhost")
    assert settings.server_ip_addresses == ("10.0.0.5",)
    assert settings.operators == ("spiffe://retail.example/operator/alice",)
    assert settings.max_connections == 64
    assert settings.spiffe_id_template == "/store/{site}/node/{node}"
    assert settings.tls_cert == tmp_path / "c.pem"


def test_the_old_spellings_still_set_the_same_settings(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    argv = ["serve", "--store", "sqlite:///x.db", "--host", "0.0.0.0", "--port", "9443", "--policy-keys", str(keys)]
    settings = settings_from(_parser().parse_args([*argv, "--ek-roots", str(tmp_path), "--fleet", "f.yaml"]))
    assert (settings.store_url, settings.listen_host, settings.listen_port) == ("sqlite:///x.db", "0.0.0.0", 9443)
    assert settings.policy_keys_dir == keys
    assert settings.ek_roots_dir == tmp_path
    assert settings.fleet_file == Path("f.yaml")


def test_a_flag_wins_over_the_env_var_and_the_env_var_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTD_SVID_TTL_S", "7200")
    monkeypatch.setenv("TRUSTD_SERVER_DNS_NAMES", '["hub.env.example"]')
    settings = settings_from(_parser().parse_args(["serve"]))
    assert settings.svid_ttl_s == 7200
    assert settings.server_dns_names == ("hub.env.example",)
    settings = settings_from(_parser().parse_args(["serve", "--svid-ttl", "1h", "--dns-name", "hub.flag.example"]))
    assert settings.svid_ttl_s == 3600
    assert settings.server_dns_names == ("hub.flag.example",)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("8h", 28800), ("7d", 604800), ("45", 45), ("1.5s", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--svid-ttl", "8 hours"], "--svid-ttl"),
        (["--svid-ttl", "1.5s"], "whole seconds"),
        (["--svid-ttl", "30s"], "svid_ttl_s"),  # below the setting's bound (60 s): refused, never raised to it
        (["--ip", "hub.example"], "server_ip_addresses"),
        (["--dns-name", "bad name"], "server_dns_names"),
        (["--dns-name=-lead.example"], "server_dns_names"),
    ],
)
def test_a_bad_value_is_one_line_exit_2_naming_the_setting(tmp_path: Path, argv: list[str], needle: str) -> None:
    done = subprocess.run(
        [str(BIN / "trustd"), "serve", "--data-dir", str(tmp_path / "data"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert needle in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made
