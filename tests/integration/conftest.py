"""Real peers for integration tests: software TPMs (swtpm) and a running trustd over TLS.

A missing peer fails the test with the command that installs it; nothing here is faked.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from attestation.device import TPMDevice
from localpeers.hub import GOLDEN_BANKS, RunningHub, running_hub
from localpeers.nodes import ek_roots_of
from localpeers.simboot import boot_events, measure_boot
from localpeers.swtpm import INSTALL_HINT, SoftwareTPM, SoftwareTPMFactory


def _require_swtpm() -> None:
    missing = [t for t in ("swtpm", "swtpm_setup", "swtpm_localca") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: {INSTALL_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def tpm_factory(tmp_path_factory: pytest.TempPathFactory) -> SoftwareTPMFactory:
    _require_swtpm()
    factory = SoftwareTPMFactory(tmp_path_factory.mktemp("manufacturer"))
    factory.provision("first")  # makes the manufacturer's root
    return factory


@pytest.fixture(scope="session")
def ek_roots(tpm_factory: SoftwareTPMFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ek_roots_of(tpm_factory, tmp_path_factory.mktemp("ek-roots"))


@dataclass
class BootedDevice:
    tpm: SoftwareTPM
    event_log: bytes

    @property
    def tcti(self) -> str:
        return self.tpm.tcti


def _booted(factory: SoftwareTPMFactory, **boot: object) -> Iterator[BootedDevice]:
    tpm = factory.start()
    try:
        with TPMDevice(tpm.tcti) as device:
            log = measure_boot(device, boot_events(**boot), GOLDEN_BANKS)  # type: ignore[arg-type]
        yield BootedDevice(tpm, log)
    finally:
        tpm.stop()


@pytest.fixture
def golden_device(tpm_factory: SoftwareTPMFactory) -> Iterator[BootedDevice]:
    yield from _booted(tpm_factory)


@pytest.fixture
def tampered_device(tpm_factory: SoftwareTPMFactory) -> Iterator[BootedDevice]:
    yield from _booted(tpm_factory, bootloader=b"shim+grub 15.8 (patched by an attacker)")


@pytest.fixture
def hub(tmp_path: Path, ek_roots: Path) -> Iterator[RunningHub]:
    with running_hub(tmp_path, ek_roots=ek_roots) as running:
        yield running
