"""Pod traffic on the real node: the bridge, a ClusterIP Service, no way out, and NetworkPolicies (kube-router).

Every probe is `nc` in a client pod; a server answers with its pod name, so the probe's output says which pod it
reached. The NetworkPolicy test also measures how long kube-router takes to refuse the first packet after a
policy is created, and to let traffic through again after it is deleted.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from localpeers.realcluster import RealCluster

from .workloads import PORT, RunningPod, apply, client, namespace, probe, server


@pytest.fixture(scope="module")
def pods(real_cluster: RealCluster) -> Iterator[dict[str, RunningPod]]:
    ns = namespace(real_cluster, "network-test")
    yield {"server": server(real_cluster, "server", ns), "client": client(real_cluster, "client", ns)}
    real_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_pod_reaches_another_pod_over_the_bridge(real_cluster: RealCluster, pods: dict[str, RunningPod]) -> None:
    reached = probe(real_cluster, pods["client"], pods["server"].ip)
    assert reached.returncode == 0, reached.stderr
    assert reached.stdout.strip() == "server"
    refused = probe(real_cluster, pods["client"], pods["server"].ip, port=PORT + 1)
    assert refused.returncode != 0
    assert "refused" in refused.stderr  # a real TCP stack answered, not a stub


def test_a_cluster_ip_service_reaches_its_pod(real_cluster: RealCluster, pods: dict[str, RunningPod]) -> None:
    ns = pods["server"].namespace
    apply(
        real_cluster,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "server", "namespace": ns},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": PORT}]},
        },
    )
    service = json.loads(real_cluster.kubectl("get", "service", "server", "-n", ns, "-o", "json").stdout)
    cluster_ip = service["spec"]["clusterIP"]
    assert cluster_ip.startswith("198.18.128.")
    deadline = time.monotonic() + 30  # the endpoints controller, then kube-proxy's next sync
    while (reached := probe(real_cluster, pods["client"], cluster_ip, port=80)).stdout.strip() != "server":
        assert time.monotonic() < deadline, f"ClusterIP {cluster_ip} never answered: {reached.stderr}"
        time.sleep(0.5)
    # the node itself reaches the ClusterIP too (kube-proxy's OUTPUT rules, before the guard in OUTPUT)
    from_node = subprocess.run(
        ["socat", "-T2", "-", f"TCP:{cluster_ip}:80"], capture_output=True, text=True, timeout=10, check=False
    )
    assert from_node.stdout.strip() == "server", from_node.stderr


def _ip_counters(cluster: RealCluster, pod: RunningPod) -> dict[str, int]:
    """The pod's IPv4 counters (/proc/net/snmp of its network namespace): OutRequests counts the packets its
    stack sent, OutNoRoutes the ones it refused for want of a route. (eth0's tx_packets is no measure: IPv6
    router solicitations and MLD reports move it at their own times.)"""
    out = cluster.kubectl("exec", pod.name, "-n", pod.namespace, "--", "cat", "/proc/net/snmp").stdout
    names, values = [line.split()[1:] for line in out.splitlines() if line.startswith("Ip:")][:2]
    return dict(zip(names, map(int, values), strict=True))


def test_a_pod_has_no_route_out_of_the_machine(real_cluster: RealCluster, pods: dict[str, RunningPod]) -> None:
    routes = real_cluster.kubectl("exec", "client", "-n", pods["client"].namespace, "--", "ip", "route").stdout
    assert "default" not in routes, routes
    before = _ip_counters(real_cluster, pods["client"])
    out = probe(real_cluster, pods["client"], "1.1.1.1", port=53)
    assert out.returncode != 0
    assert "Network is unreachable" in out.stderr  # refused inside the pod
    after = _ip_counters(real_cluster, pods["client"])
    assert after["OutNoRoutes"] > before["OutNoRoutes"]
    assert after["OutRequests"] == before["OutRequests"]  # no packet was even sent


def _dropped_on_the_way_out() -> int:
    """Packets the mangle POSTROUTING guard dropped on the default interface (to or from 198.18.0.0/15)."""
    rules = subprocess.run(
        ["iptables", "-t", "mangle", "-L", "POSTROUTING", "-v", "-n", "-x"], capture_output=True, text=True, check=True
    ).stdout
    return sum(int(line.split()[0]) for line in rules.splitlines() if "DROP" in line and "198.18.0.0/15" in line)


def test_an_unused_cluster_ip_is_refused_on_the_node(real_cluster: RealCluster, pods: dict[str, RunningPod]) -> None:
    """kube-proxy has no rule for a ClusterIP no Service holds; with forwarding on, the node would route it out
    of its default interface. The policy rule for the bridge refuses it at once instead."""
    dropped = _dropped_on_the_way_out()
    started = time.monotonic()
    out = probe(real_cluster, pods["client"], "198.18.128.250", port=80)
    assert out.returncode != 0
    assert "unreachable" in out.stderr, out.stderr  # refused, not timed out: nothing was sent on
    assert time.monotonic() - started < 5
    assert _dropped_on_the_way_out() == dropped  # and nothing reached the last guard either


def test_network_policies_let_only_the_named_peer_through(real_cluster: RealCluster) -> None:
    ns = namespace(real_cluster, "policy-test")
    target = server(real_cluster, "target", ns)
    allowed = client(real_cluster, "allowed", ns, {"role": "allowed"})
    denied = client(real_cluster, "denied", ns, {"role": "denied"})
    for source in (allowed, denied):
        assert probe(real_cluster, source, target.ip).stdout.strip() == "target"

    policies = [
        {"metadata": {"name": "default-deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
        {
            "metadata": {"name": "allow-allowed"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "target"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"role": "allowed"}}}], "ports": [{"port": PORT}]}
                ],
            },
        },
    ]
    applied = time.monotonic()
    for policy in policies:
        policy["metadata"]["namespace"] = ns  # type: ignore[index]
        apply(real_cluster, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **policy})
    while probe(real_cluster, denied, target.ip, wait_s=1).returncode == 0:
        assert time.monotonic() - applied < 60, "kube-router never enforced the default deny"
    refused_after = time.monotonic() - applied
    # kube-router may apply the deny a sync before the allow: the allowed peer gets through within seconds
    while probe(real_cluster, allowed, target.ip).stdout.strip() != "target":
        assert time.monotonic() - applied < 60, "the allowed peer never got through"
    assert probe(real_cluster, denied, target.ip, wait_s=1).returncode != 0

    removed = time.monotonic()
    real_cluster.kubectl("delete", "networkpolicy", "--all", "-n", ns)
    while probe(real_cluster, denied, target.ip, wait_s=1).stdout.strip() != "target":
        assert time.monotonic() - removed < 60, "traffic never flowed again after the policies were deleted"
    flowing_after = time.monotonic() - removed
    print(f"\nNetworkPolicy: first refused packet {refused_after:.1f}s after apply", flush=True)
    print(f"NetworkPolicy: traffic flowing {flowing_after:.1f}s after delete", flush=True)
    real_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(
    real_cluster: RealCluster, pods: dict[str, RunningPod]
) -> None:
    """In-cluster clients (the chart's) find the API server at the `kubernetes` Service, whose endpoint the lease
    reconciler writes for the node's address. A plain HTTP request to its TLS port gets Go's answer to that."""
    request = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w2 198.18.128.1 443'
    out = real_cluster.kubectl("exec", "client", "-n", pods["client"].namespace, "--", "sh", "-c", request, check=False)
    assert "Client sent an HTTP request to an HTTPS server" in out.stdout, out.stdout + out.stderr
