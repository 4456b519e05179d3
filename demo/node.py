"""One real node for the planes that need one (admission, distribution): started once by `make demo` and handed
to each, so that the demo pays for the cluster's start and the images' import once.

The node is localpeers.realcluster's (one per machine: a second start refuses, naming the `down` command), with
the images `make images` built for this commit imported into its containerd.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from demo.shell import command, say
from localpeers.chartrelease import ClusterImages, load_images
from localpeers.nodeconfig import RUNTIME
from localpeers.realcluster import RealCluster, running_real_cluster


@dataclass(frozen=True)
class RealNode:
    cluster: RealCluster
    images: ClusterImages


@contextmanager
def real_node(workdir: Path) -> Iterator[RealNode]:
    say(
        "== The node: etcd, kube-apiserver, controller-manager, scheduler, containerd, kubelet, kube-proxy, kube-router"
    )
    command(["python", "-m", "localpeers.realcluster", "up", "--dir", workdir])
    if workdir.exists() and not RUNTIME.exists():  # etcd's data from an earlier run would hold its objects
        shutil.rmtree(workdir)
    started = time.monotonic()
    with running_real_cluster(workdir.resolve()) as cluster:
        say(f"   node {cluster.node_name} Ready on 198.18.255.1 in {cluster.startup_s} s")
        command(["make", "images"], suffix="   # this commit's edgetrust, opa and pause images (cached per commit)")
        loading = time.monotonic()
        images = load_images(cluster)
        say(f"   images built (or found) and imported in {time.monotonic() - loading:.0f} s")
        for short, reference in sorted(images.references.items()):
            say(f"   {reference} = {images.digests[short][:19]}... imported (ctr -n k8s.io images import)")
        say(f"   ready for the planes in {time.monotonic() - started:.0f} s")
        yield RealNode(cluster, images)
        command(["python", "-m", "localpeers.realcluster", "down", "--dir", workdir])
