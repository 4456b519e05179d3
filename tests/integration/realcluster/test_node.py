"""The node: it registers with its own address, turns Ready, and runs a pod from a locally built image."""

from __future__ import annotations

import ipaddress
import json

from localpeers.realcluster import RealCluster

from .workloads import namespace, server


def test_the_node_is_ready_on_its_own_address(real_cluster: RealCluster) -> None:
    node = json.loads(real_cluster.kubectl("get", "node", real_cluster.node_name, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", node["status"]["conditions"]
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == "198.18.255.1"  # the dummy interface's, never eth0's
    assert not [t for t in node["spec"].get("taints", []) if t["key"] == "node.kubernetes.io/not-ready"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"


def test_a_pod_reaches_running_with_an_address_in_the_pod_range(real_cluster: RealCluster) -> None:
    ns = namespace(real_cluster, "node-test")
    pod = server(real_cluster, "first", ns)
    assert ipaddress.ip_address(pod.ip) in ipaddress.ip_network(real_cluster.pod_cidr)
    # the kubelet's streaming path works end to end (API server -> kubelet -> containerd): logs and exec
    assert real_cluster.kubectl("exec", pod.name, "-n", ns, "--", "hostname").stdout.strip() == "first"


def test_every_program_has_a_resident_size(real_cluster: RealCluster) -> None:
    rss = real_cluster.rss_mib()
    print(f"\nRSS MiB: {json.dumps({k: round(v, 1) for k, v in rss.items()})}")
    for name in ("etcd", "kube-apiserver", "containerd", "kubelet", "kube-controller-manager", "kube-scheduler",
                 "kube-proxy", "kube-router"):  # fmt: skip
        assert rss.get(name, 0) > 1, f"{name} is not running: {rss}"
