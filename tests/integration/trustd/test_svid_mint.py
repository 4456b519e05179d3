"""`trustd svid mint` as a new hub's operator uses it: the first operator is minted before the hub ever ran (the
CA is made then), named with `trustd serve --operator`, and lists the fleet with `trustctl fleet list`; the files
are 0600 in a 0700 directory and the mint is in the hub's audit log. The hub's name: `--dns-name` re-issues the
serving certificate of a data directory that holds one with other names."""

from __future__ import annotations

import json
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from localpeers.hub import hub_process, init_trust_files
from localpeers.tlsca import TestCA
from trustd.server.store import open_store

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
OPERATOR = "spiffe://edge.example/operator/alice"


def run(tool: str, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *argv], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def mint(data: Path, spiffe_id: str, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`trustd svid mint` on the hub's data dir, initialised first as the operator does (`trustd ca init`)."""
    init_trust_files(data)
    return run(
        "trustd", "svid", "mint", "--spiffe-id", spiffe_id, "--data-dir", str(data), "--trust-domain", "edge.example",
        *argv, cwd=cwd,
    )  # fmt: skip


@pytest.fixture
def ek_roots(tmp_path: Path) -> Path:
    roots = tmp_path / "ek-roots"
    roots.mkdir()
    (roots / "vendor.pem").write_bytes(TestCA(tmp_path / "ek-ca").ca_file.read_bytes())
    return roots


def test_the_first_operator_is_minted_before_the_hub_runs_and_lists_the_fleet(tmp_path: Path, ek_roots: Path) -> None:
    data = tmp_path / "hub" / "hub"  # where hub_process keeps the hub's data
    assert not data.exists()
    done = mint(data, OPERATOR, "--ttl", "8h", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    out = tmp_path / "operator-alice"  # the default --out: the ID's path
    assert view["spiffe_id"] == OPERATOR
    assert (view["svid"], view["key"], view["bundle"]) == tuple(
        f"operator-alice/{name}" for name in ("svid.pem", "svid.key", "bundle.pem")
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("svid.pem", "svid.key", "bundle.pem"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    leaf = x509.load_pem_x509_certificates((out / "svid.pem").read_bytes())[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 8 * 3600 <= lifetime.total_seconds() <= 8 * 3600 + 60  # 8 h plus the CA's clock-skew allowance
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == [OPERATOR]
    assert (out / "bundle.pem").read_bytes() == (data / "ca" / "ca.crt").read_bytes()  # the CA the hub will use

    with hub_process(tmp_path / "hub", ek_roots=ek_roots, extra_args=("--operator", OPERATOR)) as hub:
        tls = (
            "--ca-bundle",
            str(out / "bundle.pem"),
            "--svid",
            str(out / "svid.pem"),
            "--svid-key",
            str(out / "svid.key"),
        )
        listed = run("trustctl", "fleet", "list", "--hub", hub.url, *tls, "--json")
        assert listed.returncode == 0, listed.stderr
        json.loads(listed.stdout)
        # minted while the hub runs: a second operator it does not know is refused by the hub, not by mint
        bob = tmp_path / "bob"
        assert mint(data, "spiffe://edge.example/operator/bob", "--out", str(bob)).returncode == 0
        stranger = (
            "--ca-bundle",
            str(bob / "bundle.pem"),
            "--svid",
            str(bob / "svid.pem"),
            "--svid-key",
            str(bob / "svid.key"),
        )
        refused = run("trustctl", "fleet", "list", "--hub", hub.url, *stranger)
        assert refused.returncode == 1, refused.stderr

    store = open_store(f"sqlite:///{data / 'trustd.db'}")
    try:
        minted = [e for e in store.audit_events() if e.event == "svid.mint"]
        assert {e.subject for e in minted} == {OPERATOR, "spiffe://edge.example/operator/bob"}
        assert all(e.outcome == "issued" and e.detail["serial"] and "uid" in e.detail["by"] for e in minted)
        assert [s.serial for s in store.svids(OPERATOR)] == [view["serial"]]
    finally:
        store.close()


def _names(pem: bytes) -> tuple[list[str], list[str]]:
    leaf = x509.load_pem_x509_certificates(pem)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def _handshake(port: int, roots: Path, server_name: str) -> None:
    context = ssl.create_default_context(cafile=str(roots))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name),
    ):
        pass


def test_dns_name_reissues_the_serving_certificate_of_an_existing_data_dir(tmp_path: Path, ek_roots: Path) -> None:
    with hub_process(tmp_path / "hub", ek_roots=ek_roots):
        pass
    served = tmp_path / "hub" / "hub" / "tls" / "server.pem"
    assert _names(served.read_bytes()) == (["localhost"], ["127.0.0.1"])

    names = ("--dns-name", "hub.retail.example", "--dns-name", "trustd.retail.example", "--ip", "127.0.0.1")
    with hub_process(tmp_path / "hub", ek_roots=ek_roots, extra_args=names) as hub:
        assert _names(served.read_bytes()) == (["hub.retail.example", "trustd.retail.example"], ["127.0.0.1"])
        port = int(hub.url.rsplit(":", 1)[1])
        _handshake(port, hub.ca_bundle, "hub.retail.example")  # https://hub.retail.example:8443 verifies
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, hub.ca_bundle, "localhost")  # the default name was replaced, not kept
