"""Kubernetes workload attestation: the node agent names a caller by its pod (namespace, service account, labels)
as looked up on a real kube-apiserver, and serves the SVID of the entry whose k8s selectors match.

There is no kubelet or container runtime here, so no process runs inside a pod's cgroup: the caller's
`/proc/<pid>/cgroup` is written into a stand-in proc root (`--proc-root`, which a DaemonSet points at the
host's /proc) with the path a runtime gives a pod's container. The pod itself is real, in the API server.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest
from spiffe import WorkloadApiClient

from localpeers.hub import running_hub
from localpeers.kube import running_kube_apiserver
from localpeers.nodes import enroll_node
from localpeers.processes import running
from localpeers.spire import wait_for_svid
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from localpeers.webhook import pod
from tests.integration.conftest import BootedDevice
from trustd.agent.k8s import pod_uid
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration
OPERATOR = "spiffe://edge.example/operator/admin"


def test_cgroup_paths_of_both_drivers_name_the_pod() -> None:
    systemd = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b4e2c3d_aaaa_bbbb_cccc_0123456789ab.slice/cri-containerd-f00.scope\n"  # noqa: E501
    cgroupfs = "12:memory:/kubepods/burstable/pod1b4e2c3d-aaaa-bbbb-cccc-0123456789ab/0a1b2c\n"
    assert pod_uid(systemd) == pod_uid(cgroupfs) == "1b4e2c3d-aaaa-bbbb-cccc-0123456789ab"
    assert pod_uid("0::/user.slice/user-0.slice/session-1.scope\n") is None


def test_a_pod_gets_the_svid_of_its_namespace_and_service_account(
    tmp_path: Path, ek_roots: Path, golden_device: BootedDevice
) -> None:
    with (
        running_kube_apiserver(tmp_path / "kube", TestCA(tmp_path / "kube-ca")) as kube,
        running_hub(tmp_path / "hub", ek_roots=ek_roots, operators=(OPERATOR,)) as hub,
    ):
        with kube.client() as client:
            assert client.post("/api/v1/namespaces", json={"metadata": {"name": "shop"}}).status_code == 201
            body = pod("127.0.0.1:5000/web:v1", name="web-0", labels={"app": "web"}, nodeName="node-1")
            body["spec"]["serviceAccountName"] = "web"
            made = client.post("/api/v1/namespaces/shop/pods", json=body)
            assert made.status_code == 201, made.text
            uid = made.json()["metadata"]["uid"]
        node = enroll_node(
            hub.url,
            hub.ca_bundle,
            tcti=golden_device.tcti,
            event_log=golden_device.event_log,
            out_dir=tmp_path / "svid",
            node="node-1",
        )
        cert, key = issue_svid_files(hub.hub.ca, OPERATOR, tmp_path / "operator")
        hub_args = ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key)]
        for spiffe_id, selectors in (
            ("spiffe://edge.example/ns/shop/sa/web", ["k8s:ns:shop", "k8s:sa:web"]),
            ("spiffe://edge.example/ns/shop/sa/admin", ["k8s:ns:shop", "k8s:sa:admin"]),
        ):
            argv = ["fleet", "entry", "create", "--spiffe-id", spiffe_id, "--parent", node.spiffe_id]
            for selector in selectors:
                argv += ["--selector", selector]
            assert trustctl([*argv, *hub_args]) == 0

        # the stand-in for the container runtime: this process, placed in the pod's cgroup
        proc = tmp_path / "proc" / str(os.getpid())
        proc.mkdir(parents=True)
        container = f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice/cri-containerd-{secrets.token_hex(8)}.scope"
        (proc / "cgroup").write_text(f"0::/kubepods.slice/kubepods-besteffort.slice/{container}\n")
        token = tmp_path / "token"
        token.write_text(kube.token)
        socket_path = tmp_path / "agent.sock"
        agent = [str(Path(sys.executable).parent / "trustctl"), "agent", "run", "--hub", hub.url, "--svid-dir"]
        agent += [str(tmp_path / "svid"), "--socket", str(socket_path), "--state-dir", str(tmp_path / "state")]
        agent += ["--kube-node", "node-1", "--kube-url", kube.url, "--kube-token-file", str(token)]
        agent += ["--kube-ca-file", str(kube.ca_file), "--proc-root", str(tmp_path / "proc"), "--entry-poll", "1"]
        with running(agent, ready=socket_path.exists, log=tmp_path / "agent.log"):
            wait_for_svid(socket_path, "spiffe://edge.example/ns/shop/sa/web")
            client = WorkloadApiClient(f"unix://{socket_path}", default_timeout=5)
            try:
                assert [str(s.spiffe_id) for s in client.fetch_x509_svids()] == ["spiffe://edge.example/ns/shop/sa/web"]
                # out of the pod (its cgroup no longer names one): no k8s selectors, no identity
                (proc / "cgroup").write_text("0::/user.slice/user-0.slice/session-1.scope\n")
                with pytest.raises(Exception, match="no identity issued"):
                    client.fetch_x509_svid()
            finally:
                client.close()
