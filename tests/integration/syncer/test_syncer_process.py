"""`edgetrust-syncer` as a process: one sync against trustd and a real kube-apiserver, and a restart after being
killed between accepting a bundle and applying it (it converges forward and reports success, not a replay)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository, unpack
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.hub import RunningHub, running_policy_hub
from localpeers.kube import KubeAPI, running_kube_apiserver
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from localpeers.webhook import write_site_parameters
from syncer.state import AgentState

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"


def names(kube: KubeAPI) -> set[str]:
    with kube.client() as client:
        items = client.get("/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies").json()["items"]
    return {i["metadata"]["name"] for i in items}


def test_syncer_process_once_and_after_a_kill_mid_apply(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    signing = ec.generate_private_key(ec.SECP256R1())
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fleet: dict[str, object] = {
        "groups": {
            "all": {"matchLabels": {"site-class": "edge-gateway"}, "publishers": ["spiffe://edge.example/operator/ci"]}
        },
        "clusters": {"site-a": {"labels": {"site-class": "edge-gateway"}}},
    }
    public_file = tmp_path / "ci-1.pem"
    public_file.write_bytes(public)
    key = SigningKey("ci-1", signing)
    repo = tmp_path / "repo"
    shutil.copytree(REPO_POLICIES, repo)
    write_site_parameters(repo / "parameters.yaml")  # the site's registries
    with (
        running_policy_hub(tmp_path, fleet=fleet, publisher_keys={"ci-1": public}) as hub,
        running_kube_apiserver(tmp_path / "kube", ca) as kube,
    ):
        with kube.client() as client:
            client.post("/api/v1/namespaces", json={"metadata": {"name": "workloads"}}).raise_for_status()
        token = tmp_path / "token"
        token.write_text(kube.token)
        cert, private = issue_svid_files(hub.hub.ca, "spiffe://edge.example/cluster/site-a", tmp_path / "svid")
        state = tmp_path / "state"

        def syncer() -> subprocess.CompletedProcess[str]:
            argv = [str(Path(sys.executable).parent / "edgetrust-syncer"), "run", "--once", "--wait", "1"]
            argv += [
                "--hub",
                hub.url,
                "--ca-bundle",
                str(hub.ca_bundle),
                "--svid",
                str(cert),
                "--svid-key",
                str(private),
            ]
            argv += ["--cluster", "site-a", "--group", "all", "--site-class", "edge-gateway", "--state-dir", str(state)]
            argv += ["--verification-key", f"ci-1={public_file}"]
            argv += ["--kube-url", kube.url, "--kube-token-file", str(token), "--kube-ca-file", str(kube.ca_file)]
            return subprocess.run(argv, capture_output=True, text=True, timeout=120)

        publish(hub, pack(sign_files(build_files(read_repository(repo), counter=1, commit="one", group="all"), key)))
        first = syncer()
        assert first.returncode == 0, first.stderr
        assert names(kube) == {"default-deny", "allow-dns", "allow-hub"}

        (repo / "networkpolicies" / "edge-gateway" / "allow-hub.yaml").unlink()
        second = pack(sign_files(build_files(read_repository(repo), counter=2, commit="two", group="all"), key))
        publish(hub, second)
        AgentState(state).accept(second, unpack(second))  # the process died right here, before applying
        restarted = syncer()
        assert restarted.returncode == 0, restarted.stderr
        assert "re-applied 000000000002-two from disk: applied" in restarted.stderr
        assert "refused" not in restarted.stderr
        assert names(kube) == {"default-deny", "allow-dns"}
        rollout = hub.hub.policy.rollout("all") if hub.hub.policy else None
        assert rollout is not None
        assert rollout.applied == {"site-a": "unchanged"} or rollout.applied == {"site-a": "applied"}


def publish(hub: RunningHub, blob: bytes) -> None:
    assert hub.hub.policy is not None
    hub.hub.policy.publish("all", blob, publisher="spiffe://edge.example/operator/ci")
