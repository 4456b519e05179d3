"""Fixtures every test folder shares: the one real cluster of a test session.

They live here, above tests/integration and tests/security, and nowhere else: tests/security/conftest.py re-exports
the integration fixtures with a star import, and a session fixture defined in two conftests is two fixtures, which
would start a second cluster (one per machine: it refuses) in a run of both folders (`make test`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localpeers.chartrelease import ChartReleaseError, ClusterImages, load_images
from localpeers.realcluster import RealCluster, RealClusterError, running_real_cluster

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
