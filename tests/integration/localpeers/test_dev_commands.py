"""The development commands docs/quickstart.md uses: `python -m localpeers.cluster up/down` and
`python -m localpeers.simboot`, run as a reader runs them (subprocesses), against real etcd, kube-apiserver,
kubectl and swtpm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.device import TPMDevice
from attestation.eventlog import parse_event_log
from attestation.tpm2.constants import HashAlg
from localpeers.peers import REPO, peer, pinned
from localpeers.swtpm import SoftwareTPMFactory

pytestmark = pytest.mark.integration


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TSS2_LOG": "all+NONE"}
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cluster_up_serves_kubectl_refuses_a_second_up_and_down_stops_every_process(tmp_path: Path) -> None:
    up = _run("localpeers.cluster", "up", "--dir", "qs/cluster", cwd=tmp_path)
    directory = tmp_path / "qs" / "cluster"
    pid = int((directory / "cluster.pid").read_text()) if (directory / "cluster.pid").exists() else 0
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith("cluster ready at https://127.0.0.1:")
        assert (directory / "admin.token").stat().st_mode & 0o777 == 0o600
        assert (directory / "kubeconfig").stat().st_mode & 0o777 == 0o600
        kubectl = subprocess.run(
            [str(peer("kubectl")), "--kubeconfig", str(directory / "kubeconfig"), "version"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert kubectl.returncode == 0, kubectl.stderr
        assert f"Server Version: {pinned()['kube-apiserver'][1]}" in kubectl.stdout
        group = [p for p in os.listdir("/proc") if p.isdigit() and _in_group(int(p), pid)]
        assert len(group) == 3, group  # the supervisor, etcd and kube-apiserver

        again = _run("localpeers.cluster", "up", "--dir", "qs/cluster", cwd=tmp_path)
        assert again.returncode == 1
        assert again.stderr.count("\n") == 1, again.stderr
        assert f"already running from {directory} (pid {pid})" in again.stderr

        down = _run("localpeers.cluster", "down", "--dir", "qs/cluster", cwd=tmp_path)
        assert down.returncode == 0, down.stderr
        assert down.stdout == f"cluster stopped (pid {pid})\n"
        assert not [p for p in group if _alive(int(p))]
        assert not (directory / "cluster.pid").exists()

        idle = _run("localpeers.cluster", "down", "--dir", "qs/cluster", cwd=tmp_path)
        assert idle.returncode == 0
        assert idle.stdout == f"no cluster running from {directory}\n"
    finally:
        if pid and _alive(pid):
            os.killpg(pid, signal.SIGKILL)


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except ProcessLookupError:
        return False


def test_simboot_extends_the_pcrs_its_event_log_replays_to(tmp_path: Path) -> None:
    tpm = SoftwareTPMFactory(tmp_path / "factory").start("device")
    try:
        done = _run("localpeers.simboot", "--tpm", tpm.tcti, "--out", "boot.log", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("measured a golden boot: 13 events")
        replayed = parse_event_log((tmp_path / "boot.log").read_bytes()).replay()
        with TPMDevice(tpm.tcti) as device:
            quoted = device.read_pcrs({HashAlg.SHA256: [0, 4, 7], HashAlg.SHA1: [0, 4, 7]})
        for bank in (HashAlg.SHA256, HashAlg.SHA1):
            assert {i: quoted[bank][i] for i in (0, 4, 7)} == {i: replayed[bank][i] for i in (0, 4, 7)}
    finally:
        tpm.stop()


def test_simboot_tampered_bootloader_changes_pcr_4_only(tmp_path: Path) -> None:
    tpm = SoftwareTPMFactory(tmp_path / "factory").start("device")
    try:
        done = _run("localpeers.simboot", "--tpm", tpm.tcti, "--out", "bad.log", "--tamper", "bootloader", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    finally:
        tpm.stop()
    from localpeers.simboot import CLI_BANKS, boot_events, write_event_log

    golden = parse_event_log(write_event_log(boot_events(), CLI_BANKS)).replay()[HashAlg.SHA256]
    tampered = parse_event_log((tmp_path / "bad.log").read_bytes()).replay()[HashAlg.SHA256]
    assert [i for i in (0, 4, 7) if golden[i] != tampered[i]] == [4]


def test_simboot_says_in_one_line_when_the_tpm_is_not_there(tmp_path: Path) -> None:
    done = _run("localpeers.simboot", "--tpm", "swtpm:host=127.0.0.1,port=1", "--out", "boot.log", cwd=tmp_path)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1, done.stderr
    assert "swtpm:host=127.0.0.1,port=1" in done.stderr
    assert not (tmp_path / "boot.log").exists()


def test_cluster_down_never_signals_a_process_a_stale_pid_file_names(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        directory = tmp_path / "qs" / "cluster"
        directory.mkdir(parents=True)
        (directory / "cluster.pid").write_text(f"{bystander.pid}\n")
        down = _run("localpeers.cluster", "down", "--dir", "qs/cluster", cwd=tmp_path)
        assert down.returncode == 0, down.stderr
        assert down.stdout == f"no cluster running from {directory}\n"
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
