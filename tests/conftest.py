"""Fixtures every test folder shares: the one real single-node cluster of a test session.

Here, not in tests/integration/conftest.py, because tests/security shares the integration fixtures by importing
them into its own conftest, which would make a second session fixture, and so a second cluster, that the machine
cannot run (tests/security/test_chart_image_tags.py attacks the chart's webhook on this same cluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localpeers.chartrelease import ChartReleaseError, ClusterImages, load_images
from localpeers.realcluster import RealCluster, RealClusterError, running_real_cluster
from localpeers.softhsm import SoftHSMError, SoftToken, make_token

# One real single-node cluster per test session (localpeers/realcluster.py), shared by every test that names
# `real_cluster` (tests/integration/realcluster, tests/integration/chart_real, tests/security, ...): each works in
# its own namespace and leaves the others' alone. A missing peer or Debian package fails the test with the command
# that installs it. Only one cluster can run on a machine, so the tests that start and stop their own
# (test_lifecycle.py) run first, before the session's cluster exists.
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


@pytest.fixture
def soft_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftToken:
    """A fresh SoftHSM2 token for this test (localpeers/softhsm.py), active in this process and its children."""
    try:
        token = make_token(tmp_path / "softhsm")
    except SoftHSMError as error:
        pytest.fail(str(error), pytrace=False)
    monkeypatch.setenv("SOFTHSM2_CONF", str(token.conf))
    token.activate()
    return token
