"""A successful `trustctl enroll` says what it did and nothing else: tss2's probes of absent EK-certificate NV
indices used to print six `ERROR:esys ... NV_ReadPublic` lines. Real processes (the trustctl entry point, a
swtpm with and without an EK certificate, a running hub), because tss2 reads its log level once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localpeers.hub import RunningHub
from localpeers.swtpm import SoftwareTPM, SoftwareTPMFactory
from tests.integration.conftest import BootedDevice

pytestmark = pytest.mark.integration

TRUSTCTL = Path(sys.executable).parent / "trustctl"


def _enroll(hub: RunningHub, tcti: str, log: Path | None, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(TRUSTCTL), "enroll", "--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--tpm", tcti]
    argv += ["--device-class", "edge-gateway", "--site", "lab", "--node", out.name, "--out", str(out), *extra]
    if log is not None:
        argv += ["--event-log", str(log)]
    env = {k: v for k, v in os.environ.items() if k != "TSS2_LOG"}  # the user's own TSS2_LOG would decide
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.fixture
def no_ek_cert(tpm_factory: SoftwareTPMFactory) -> Iterator[SoftwareTPM]:
    tpm = tpm_factory.start(ek_cert=False)
    try:
        yield tpm
    finally:
        tpm.stop()


def test_a_successful_enrollment_prints_no_tss2_lines_and_v_shows_the_probing(
    hub: RunningHub, golden_device: BootedDevice, tmp_path: Path
) -> None:
    log = tmp_path / "eventlog.bin"
    log.write_bytes(golden_device.event_log)
    quiet = _enroll(hub, golden_device.tcti, log, tmp_path / "gw-1")
    assert quiet.returncode == 0, quiet.stderr
    assert "enrolled as spiffe://edge.example/site/lab/node/gw-1" in quiet.stdout
    assert quiet.stderr == ""  # no ERROR:esys, no WARNING:esys, nothing at all

    verbose = _enroll(hub, golden_device.tcti, log, tmp_path / "again" / "gw-1", "-v")  # the same node again
    assert verbose.returncode == 0, verbose.stderr
    assert "ERROR:esys" not in verbose.stderr  # the absent indices are no longer asked for
    assert "EK probe: NV index 0x01c00002 holds" in verbose.stderr  # the RSA EK certificate, found
    assert "is not defined" in verbose.stderr  # the template and high-range indices, absent


def test_a_tpm_without_an_ek_certificate_is_refused_in_one_line(
    hub: RunningHub, no_ek_cert: SoftwareTPM, tmp_path: Path
) -> None:
    refused = _enroll(hub, no_ek_cert.tcti, None, tmp_path / "gw-3")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("trustctl enroll: this TPM has no EK certificate in NV")

    verbose = _enroll(hub, no_ek_cert.tcti, None, tmp_path / "gw-4", "-v")
    assert verbose.returncode == 1
    assert "EK probe: NV index 0x01c00002 is not defined" in verbose.stderr


def test_an_unreachable_tpm_is_one_line_and_v_shows_tss2s_own(hub: RunningHub, tmp_path: Path) -> None:
    refused = _enroll(hub, "swtpm:host=127.0.0.1,port=1", None, tmp_path / "gw-5")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "trustctl enroll: cannot open the TPM at 'swtpm:host=127.0.0.1,port=1': tcti:IO failure; "
        "is the TPM (or swtpm) running?"
    ]
    verbose = _enroll(hub, "swtpm:host=127.0.0.1,port=1", None, tmp_path / "gw-6", "-v")
    assert "Cannot connect to swtpm TPM socket" in verbose.stderr
