"""One real single-node cluster per test session (localpeers/realcluster.py): starting it costs about a minute.

The cluster is shared: each test works in its own namespace and leaves the others' alone. A missing peer or
Debian package fails the test with the command that installs it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localpeers.realcluster import RealCluster, RealClusterError, running_real_cluster


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    try:
        with running_real_cluster(tmp_path_factory.mktemp("realcluster")) as cluster:
            print(f"\nreal cluster started: {cluster.startup_s} s", flush=True)
            yield cluster
    except RealClusterError as error:
        pytest.fail(str(error), pytrace=False)
