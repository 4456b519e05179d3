"""Attestation-aware binding on the real node, with the real scheduler (issue 16).

One release: the node agent (its init container enrolls the node with the hub: node=<Kubernetes node name>,
site=lab, on a host swtpm; see test_node_agent.py for that stand-in), the syncer (its cluster `edge-node` at
site `lab` in the hub's fleet file) relaying the hub-signed node attestation document into the ConfigMap, and
the webhook with `webhook.nodeAttestation.enabled`, whose binding webhook the API server calls for every
scheduler Binding outside the exempt namespaces.

A pod schedules onto the attested node. The operator revokes the node at the hub (`trustctl fleet revoke`);
once the webhook holds the document and list that say so, a new pod stays Pending, and the scheduler's
FailedScheduling event carries the webhook's reason. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from localpeers.chartrelease import ChartReleaseError, ClusterImages, fullname, install, merge_values, uninstall
from localpeers.hub import RunningHub, running_hub
from localpeers.nodeagent import diagnosis, node_agent_host, node_agent_values, trust_bundle_secret
from localpeers.nodeconfig import NODE_IP, NODE_NAME
from localpeers.realcluster import RealCluster
from localpeers.svid import issue_svid_files
from localpeers.swtpm import SoftwareTPMFactory
from tests.integration.realcluster.workloads import apply, namespace
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration

OPERATOR = "spiffe://edge.example/operator/admin"
CLUSTER = "edge-node"
CLUSTER_ID = f"spiffe://edge.example/cluster/{CLUSTER}"
NODE_ID = f"spiffe://edge.example/site/lab/node/{NODE_NAME}"
RELEASE, NS, APPS = "bind", "et-bind", "et-bind-apps"
READYZ = (
    "import ssl, urllib.request; "
    "print(urllib.request.urlopen('https://127.0.0.1:8443/readyz', context=ssl._create_unverified_context())"
    ".read().decode())"
)


@pytest.fixture
def bind_hub(real_cluster: RealCluster, ek_roots: Path, tmp_path: Path) -> Iterator[RunningHub]:
    """trustd on the node's address: enrollment (the swtpm's manufacturer) and policy distribution (the cluster
    at site lab)."""
    keys = tmp_path / "publisher-keys"
    keys.mkdir()
    (keys / "ci-1.pem").write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "groups": {"gateways": {"matchLabels": {"site-class": "edge-gateway"}, "nodeAttestationMaxAge": 3600}},
                "clusters": {CLUSTER: {"labels": {"site-class": "edge-gateway", "site": "lab"}}},
                "operators": [OPERATOR],
            }
        )
    )
    with running_hub(
        tmp_path / "hub",
        ek_roots=ek_roots,
        listen_host=NODE_IP,
        server_ip_addresses=(NODE_IP,),
        fleet_file=fleet,
        policy_keys_dir=keys,
        trust_domain="edge.example",
    ) as hub:
        yield hub


def _workload(image: str, name: str) -> dict[str, Any]:
    """A pod the default library admits, left to the scheduler."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": APPS, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "10m", "memory": "32Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def _wait(what: str, check: Callable[[], Any], timeout_s: float, diagnose: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout_s}s:\n{diagnose()}")
        time.sleep(1)


def _pod(cluster: RealCluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cluster.kubectl("-n", APPS, "get", "pod", name, "-o", "json").stdout)
    return found


def _scheduling_failures(cluster: RealCluster, name: str) -> list[str]:
    events = json.loads(
        cluster.kubectl(
            "-n", APPS, "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
    )
    return [e.get("message", "") for e in events["items"] if e.get("reason") == "FailedScheduling"]


def _webhook_readyz(cluster: RealCluster) -> list[dict[str, Any]]:
    """/readyz of every webhook replica, asked in its own container (loopback)."""
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=webhook"
    pods = json.loads(cluster.kubectl("-n", NS, "get", "pods", "-l", selector, "-o", "json").stdout)["items"]
    found = []
    for pod in pods:
        done = cluster.kubectl(
            "-n", NS, "exec", pod["metadata"]["name"], "-c", "webhook", "--", "python3.11", "-c", READYZ,
            check=False, timeout_s=30,
        )  # fmt: skip
        found.append(json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-300:]})
    return found


def test_a_revoked_nodes_pods_stay_pending_with_the_webhooks_reason(
    real_cluster: RealCluster,
    cluster_images: ClusterImages,
    tpm_factory: SoftwareTPMFactory,
    bind_hub: RunningHub,
    tmp_path: Path,
) -> None:
    cluster, hub = real_cluster, bind_hub
    revocations = hub.hub.revocations
    try:
        namespace(cluster, NS)
        trust_bundle_secret(cluster, NS, hub.ca_bundle)
        cert, key = issue_svid_files(hub.hub.ca, CLUSTER_ID, tmp_path / "cluster-svid")  # the --svid fallback
        cluster.kubectl("-n", NS, "create", "secret", "tls", "edgetrust-cluster-svid", f"--cert={cert}", f"--key={key}")
        with node_agent_host(tpm_factory, tmp_path, name="golden") as host:
            values = merge_values(
                cluster_images.helm_values(),
                node_agent_values(hub.url, host),
                {
                    "webhook": {"enabled": True, "replicas": 1, "nodeAttestation": {"enabled": True}},
                    "syncer": {
                        "svidFallbackSecret": "edgetrust-cluster-svid",  # the binding is tested here, not identity
                        "enabled": True,
                        "hub": hub.url,
                        "cluster": CLUSTER,
                        "group": "gateways",
                        "siteClass": "edge-gateway",
                        "waitSeconds": 10,
                        "verificationKeys": {"ci-1": (tmp_path / "publisher-keys" / "ci-1.pem").read_text()},
                        "revocationKey": revocations.public_key_pem.decode(),
                        "persistence": {"enabled": False},
                    },
                },
            )
            try:
                install(cluster, RELEASE, NS, values, work=tmp_path / "helm", timeout_s=150)
            except ChartReleaseError as error:
                raise AssertionError(f"{error}\n{diagnosis(cluster, NS, RELEASE)}") from error
            assert [d.spiffe_id for d in hub.hub.store.devices() if d.claims.get("node") == NODE_NAME] == [NODE_ID]

            def state() -> str:
                log = cluster.kubectl("-n", NS, "logs", f"deploy/{fullname(RELEASE)}-syncer", "--tail=30", check=False)
                return f"webhook: {_webhook_readyz(cluster)}\nsyncer:\n{log.stdout}\n{diagnosis(cluster, NS, RELEASE)}"

            image = cluster_images.references["edgetrust"]
            namespace(cluster, APPS)
            apply(cluster, _workload(image, "before"))
            # the scheduler retries a refused binding (backoff): the pod runs once the webhook holds a document
            _wait(
                "pod 'before' Running on the attested node",
                lambda: _pod(cluster, "before").get("status", {}).get("phase") == "Running",
                120,
                state,
            )
            assert _pod(cluster, "before")["spec"]["nodeName"] == NODE_NAME

            revoke = _revoke_argv(hub, tmp_path)
            revoked_at = time.monotonic()
            assert trustctl(revoke) == 0
            counter = revocations.current().counter
            _wait(
                "every webhook replica holding the revocation",
                lambda: all(
                    (r.get("node_attestation") or {}).get("revocations", -1) >= counter
                    for r in _webhook_readyz(cluster)
                ),
                90,
                state,
            )
            held_s = time.monotonic() - revoked_at
            apply(cluster, _workload(image, "after"))
            reason = f"node '{NODE_NAME}' ({NODE_ID}) is revoked at the hub"
            failures = _wait(
                "the webhook's reason in the pod's FailedScheduling event",
                lambda: [m for m in _scheduling_failures(cluster, "after") if reason in m],
                90,
                lambda: f"events: {_scheduling_failures(cluster, 'after')}\n{state()}",
            )
            refused_s = time.monotonic() - revoked_at
            print(f"\nFailedScheduling: {failures[0]}")
            # a figure, not an assertion: polled once a second, each poll an exec into the webhook pod
            print(f"revocation held by every webhook replica {held_s:.1f} s after `trustctl fleet revoke` began;")
            print(f"the new pod's FailedScheduling event seen {refused_s:.1f} s after the revoke began")
            pod = _pod(cluster, "after")
            assert pod["status"]["phase"] == "Pending"
            assert not pod["spec"].get("nodeName")
            assert _pod(cluster, "before")["spec"]["nodeName"] == NODE_NAME  # a pod already bound is not evicted
    finally:
        cluster.kubectl("delete", "namespace", APPS, "--ignore-not-found", "--wait=true", check=False, timeout_s=120)
        uninstall(cluster, RELEASE, NS)


def _revocations_held(readyz: dict[str, Any]) -> int:
    held = (readyz.get("node_attestation") or {}).get("revocations", -1)
    return held if isinstance(held, int) else -1


def _revoke_argv(hub: RunningHub, work: Path) -> list[str]:
    cert, key = issue_svid_files(hub.hub.ca, OPERATOR, work / "operator")
    return [
        "fleet", "revoke", NODE_NAME, "--reason", "test: node compromised",
        "--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key),
    ]  # fmt: skip
