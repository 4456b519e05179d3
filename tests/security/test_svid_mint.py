"""`trustd svid mint` will not make what it must not: a node's identity (the naming template, or a device enrolled
under an earlier one; a node's ID comes from its TPM only), the hub's own, another trust domain's, a revoked one,
a plain workload's, or an SVID longer than 30 days. Each is refused with its reason on one line, exit 1 (2 for a
bad --ttl), and nothing is written: no files, no SVID or audit row, no CA for another trust domain. The output
directory cannot be a symlink or another uid's, and a key file planted as a symlink is replaced, never
written through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localpeers.hub import hub_process, init_trust_files
from localpeers.tlsca import TestCA
from trustd.server.store import AuditEvent, DeviceRecord, SvidRecord, open_store

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TD = "spiffe://edge.example"


def mint(data: Path, spiffe_id: str, out: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "trustd"), "svid", "mint", "--spiffe-id", spiffe_id, "--out", str(out),
            "--data-dir", str(data), "--trust-domain", "edge.example", *argv,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def minted_rows(data: Path) -> list[AuditEvent]:
    store = open_store(f"sqlite:///{data / 'trustd.db'}")
    try:
        return [e for e in store.audit_events(limit=1000) if e.event == "svid.mint"]
    finally:
        store.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A hub's data dir, initialised (`trustd ca init`), whose store knows a device enrolled under an earlier
    naming template (/gw/{node})."""
    directory = tmp_path / "hub"
    directory.mkdir()
    init_trust_files(directory)
    store = open_store(f"sqlite:///{directory / 'trustd.db'}")
    now = time.time()
    try:
        store.record_enrollment(
            DeviceRecord("ek-1", f"{TD}/gw/n1", "edge-gateway", {"node": "n1"}, "ak", now),
            SvidRecord("01", f"{TD}/gw/n1", "ek-1", now, now + 3600),
            AuditEvent(now, "enroll", "enrolled", f"{TD}/gw/n1"),
        )
    finally:
        store.close()
    return directory


@pytest.mark.parametrize(
    ("spiffe_id", "reason"),
    [
        ("spiffe://other.example/operator/mallory", "not in trust domain edge.example"),
        (TD, "the trust domain itself"),
        (f"{TD}/trustd", "the hub's own ID"),
        (f"{TD}/trustd/replica-2", "the hub's own ID or namespace"),
        (f"{TD}/site/s1/node/n7", "node ID (naming template '/site/{site}/node/{node}')"),
        (f"{TD}/site/s1/node/n7/web", "equals or sits under a node ID"),
        (f"{TD}/gw/n1", "the enrolled node spiffe://edge.example/gw/n1"),
        (f"{TD}/gw/n1/sidecar", "sits under the enrolled node"),
        (f"{TD}/shop/web", "is a workload ID"),
        (f"{TD}/operator", "the /operator namespace itself"),
    ],
)
def test_a_forbidden_id_is_refused_and_nothing_is_written(
    data: Path, tmp_path: Path, spiffe_id: str, reason: str
) -> None:
    out = tmp_path / "out"
    ca_before = (data / "ca" / "ca.crt").read_bytes()
    done = mint(data, spiffe_id, out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert reason in done.stderr
    assert not out.exists()
    assert minted_rows(data) == []
    assert (data / "ca" / "ca.crt").read_bytes() == ca_before  # the CA untouched (and a mint never makes one)


def test_another_trust_domain_makes_no_data_dir(tmp_path: Path) -> None:
    done = mint(tmp_path / "fresh", "spiffe://other.example/operator/mallory", tmp_path / "out")
    assert done.returncode == 1
    assert not (tmp_path / "fresh").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ttl", ["59s", "31d", "8 hours", "-1h"])
def test_a_ttl_out_of_bounds_is_refused_not_clamped(data: Path, tmp_path: Path, ttl: str) -> None:
    done = mint(data, f"{TD}/operator/alice", tmp_path / "out", f"--ttl={ttl}")
    assert done.returncode == 2, done.stderr
    assert "--ttl" in done.stderr
    assert not (tmp_path / "out").exists()
    assert minted_rows(data) == []


def test_a_revoked_id_is_never_minted_again(tmp_path: Path) -> None:
    ek_roots = tmp_path / "ek-roots"
    ek_roots.mkdir()
    (ek_roots / "vendor.pem").write_bytes(TestCA(tmp_path / "ek-ca").ca_file.read_bytes())
    data = tmp_path / "hub" / "hub"
    init_trust_files(data)  # `trustd ca init`
    alice = tmp_path / "alice"
    assert mint(data, f"{TD}/operator/alice", alice).returncode == 0
    assert mint(data, f"{TD}/publisher/ci", tmp_path / "ci").returncode == 0
    operator = ("--svid", str(alice / "svid.pem"), "--svid-key", str(alice / "svid.key"))
    with hub_process(tmp_path / "hub", ek_roots=ek_roots, extra_args=("--operator", f"{TD}/operator/alice")) as hub:
        revoked = subprocess.run(
            [str(BIN / "trustctl"), "fleet", "revoke", f"{TD}/publisher/ci", "--reason", "key leaked",
             "--hub", hub.url, "--ca-bundle", str(alice / "bundle.pem"), *operator],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert revoked.returncode == 0, revoked.stderr
        again = mint(data, f"{TD}/publisher/ci", tmp_path / "ci-again")  # while the hub runs
        assert again.returncode == 1
        assert "was revoked" in again.stderr
        assert "key leaked" in again.stderr
        assert not (tmp_path / "ci-again").exists()
        under = mint(data, f"{TD}/publisher/ci/nightly", tmp_path / "ci-nightly")
        assert under.returncode == 1
        assert "was revoked" in under.stderr
        assert mint(data, f"{TD}/publisher/ci-2", tmp_path / "ci-2").returncode == 0  # a new name is fine
    assert [e.subject for e in minted_rows(data)].count(f"{TD}/publisher/ci") == 1


def test_an_output_directory_that_is_a_symlink_is_refused(data: Path, tmp_path: Path) -> None:
    target = tmp_path / "attacker-readable"
    target.mkdir(mode=0o755)
    link = tmp_path / "out"
    link.symlink_to(target)
    done = mint(data, f"{TD}/operator/alice", link)
    assert done.returncode == 1
    assert "symlink" in done.stderr
    assert list(target.iterdir()) == []


def test_an_output_directory_of_another_uid_is_refused(data: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
    else:
        theirs = Path("/")  # root's, and this process is not root
    done = mint(data, f"{TD}/operator/alice", theirs)
    assert done.returncode == 1
    assert "belongs to uid" in done.stderr
    assert not (theirs / "svid.key").exists()


def test_a_planted_key_symlink_is_replaced_not_written_through(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (out / "svid.key").symlink_to(victim)
    done = mint(data, f"{TD}/operator/alice", out, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["key"] == str(out / "svid.key")
    assert victim.read_text() == "untouched"
    assert not (out / "svid.key").is_symlink()
    assert (out / "svid.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("path", ["/operator/alice", "/publisher/ci", "/cluster/site-0"])
def test_what_it_is_for_is_minted(data: Path, tmp_path: Path, path: str) -> None:
    out = tmp_path / "out"
    done = mint(data, f"{TD}{path}", out, "--ttl", "90s", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spiffe_id"] == f"{TD}{path}"
    assert [e.subject for e in minted_rows(data)] == [f"{TD}{path}"]
