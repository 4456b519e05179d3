"""The agent finds the API server as client-go does in a pod (KUBERNETES_SERVICE_HOST/_PORT), so a DaemonSet on a
cluster without DNS reaches it; outside a pod, the DNS name."""

from __future__ import annotations

from trustd.cli.agent import KUBERNETES_SVC_URL, in_cluster_url


def test_a_pod_uses_the_address_the_kubelet_gives_it() -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "198.18.128.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_url(environ) == "https://198.18.128.1:443"


def test_an_ipv6_address_is_bracketed() -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert in_cluster_url(environ) == "https://[fd00::1]:6443"


def test_without_both_variables_the_dns_name() -> None:
    assert in_cluster_url({}) == KUBERNETES_SVC_URL
    assert in_cluster_url({"KUBERNETES_SERVICE_HOST": "198.18.128.1"}) == KUBERNETES_SVC_URL
