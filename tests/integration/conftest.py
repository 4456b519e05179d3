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
from localpeers.chartrelease import ChartReleaseError, ClusterImages, load_images
from localpeers.hub import GOLDEN_BANKS, RunningHub, running_hub
from localpeers.realcluster import RealCluster, RealClusterError, running_real_cluster
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
    roots = tmp_path_factory.mktemp("ek-roots")
    shutil.copy(tpm_factory.root_cert_path, roots / "manufacturer-root.pem")
    shutil.copy(tpm_factory.issuer_cert_path, roots / "manufacturer-intermediate.pem")
    return roots


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


# One real single-node cluster per test session (localpeers/realcluster.py), shared by every test that names
# `real_cluster` (tests/integration/realcluster, tests/integration/chart_real, ...): each works in its own namespace
# and leaves the others' alone. A missing peer or Debian package fails the test with the command that installs it.
# Only one cluster can run on a machine, so the tests that start and stop their own (test_lifecycle.py) run first,
# before the session's cluster exists.
_OWN_CLUSTER_MODULES = ("tests/integration/realcluster/test_lifecycle.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = [item for item in items if item.nodeid.startswith(_OWN_CLUSTER_MODULES)]
    if first:
        rest = [item for item in items if item not in first]
        items[:] = first + rest


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    try:
        with running_real_cluster(tmp_path_factory.mktemp("realcluster")) as cluster:
            print(f"\nreal cluster started: {cluster.startup_s} s", flush=True)
            yield cluster
    except RealClusterError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def cluster_images(real_cluster: RealCluster) -> ClusterImages:
    """The images `make images` built for this commit (built now if missing), imported into the node."""
    try:
        return load_images(real_cluster)
    except ChartReleaseError as error:
        pytest.fail(str(error), pytrace=False)
