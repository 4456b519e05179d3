"""The syncer agent against a real kube-apiserver: apply, prune only its own, refuse replays and forgeries,
all-or-nothing, and enforcement again after a restart with the hub out of reach."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import SIGNATURES, build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, load_verification_keys, sign_files
from localpeers.kube import KubeAPI, running_kube_apiserver
from localpeers.tlsca import TestCA
from localpeers.webhook import write_site_parameters
from syncer.agent import SyncAgent
from syncer.kube import KubeClient, KubeConfig
from syncer.sources import FileSource
from syncer.state import AgentState

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"
FOREIGN = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "someone-elses", "namespace": "workloads"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
}


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    ca = TestCA(tmp_path_factory.mktemp("ca"))
    with running_kube_apiserver(tmp_path_factory.mktemp("kube"), ca) as api:
        with api.client() as client:
            for namespace in ("workloads", "shop"):
                assert client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}}).status_code == 201
            created = client.post("/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies", json=FOREIGN)
            assert created.status_code == 201, created.text
        yield api


class Publisher:
    """Plays the hub: signs bundles from a copy of the policy repo and drops them where the agent reads."""

    def __init__(self, work: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key = SigningKey.from_pem("hub-1", pem)
        self.keys = load_verification_keys({"hub-1": public})
        self.repo = work / "repo"
        shutil.copytree(REPO_POLICIES, self.repo)
        write_site_parameters(self.repo / "parameters.yaml")  # the site's registries
        self.drop = work / "bundle.tar.gz"

    def files(self, counter: int) -> dict[str, bytes]:
        return sign_files(
            build_files(read_repository(self.repo), counter=counter, commit=f"commit{counter}", group="gateways"),
            self.key,
        )

    def publish(self, counter: int, files: dict[str, bytes] | None = None) -> bytes:
        blob = pack(files or self.files(counter))
        self.drop.write_bytes(blob)
        return blob


def live(kube: KubeAPI, namespace: str = "workloads") -> dict[str, dict[str, Any]]:
    with kube.client() as client:
        items = client.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies").json()["items"]
    return {i["metadata"]["name"]: i for i in items}


def agent_for(kube: KubeAPI, publisher: Publisher, state: Path) -> tuple[SyncAgent, KubeClient]:
    client = KubeClient(KubeConfig(kube.url, kube.token, kube.ca_file))
    agent = SyncAgent(
        cluster="site-lyon",
        group="gateways",
        site_class="edge-gateway",
        source=FileSource(publisher.drop),
        keys=publisher.keys,
        kube=client,
        state=AgentState(state),
    )
    return agent, client


def test_apply_prune_replay_forgery_all_or_nothing_and_restart(kube: KubeAPI, tmp_path: Path) -> None:
    asyncio.run(scenario(kube, tmp_path))


async def scenario(kube: KubeAPI, tmp_path: Path) -> None:
    publisher = Publisher(tmp_path)
    agent, client = agent_for(kube, publisher, tmp_path / "state")

    publisher.publish(1)
    first = await agent.sync_once()
    assert first.result == "applied", first
    assert set(live(kube)) == {"default-deny", "allow-dns", "allow-hub", "someone-elses"}
    assert live(kube)["allow-dns"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "edgetrust-syncer"
    assert "app.kubernetes.io/managed-by" not in (live(kube)["someone-elses"]["metadata"].get("labels") or {})
    assert (await agent.sync_once()).result == "not-modified"

    writes = client.writes
    publisher.publish(2)  # same policies, newer revision: no write at all
    unchanged = await agent.sync_once()
    assert unchanged.result == "unchanged"
    assert client.writes == writes

    (publisher.repo / "networkpolicies" / "edge-gateway" / "allow-hub.yaml").unlink()
    publisher.publish(3)
    pruned = await agent.sync_once()
    assert pruned.result == "applied"
    assert pruned.detail.pruned == ["workloads/allow-hub"]
    assert set(live(kube)) == {"default-deny", "allow-dns", "someone-elses"}

    replay = publisher.files(1)
    publisher.publish(1, replay)
    refused = await agent.sync_once()
    assert refused.result == "refused"
    assert "not newer than the applied counter 3" in refused.error

    tampered = publisher.files(4)
    tampered["edgetrust/networkpolicies/data.json"] = b"{}"
    publisher.publish(4, tampered)
    assert "does not match its signed hash" in (await agent.sync_once()).error
    unsigned = {k: v for k, v in publisher.files(4).items() if k != SIGNATURES}
    publisher.publish(4, unsigned)
    assert "not signed" in (await agent.sync_once()).error

    # a signed bundle whose NetworkPolicy the build would have refused: the agent checks again
    bad = yaml.safe_load((publisher.repo / "networkpolicies" / "edge-gateway" / "allow-dns.yaml").read_text())
    bad = copy.deepcopy(bad)
    bad["spec"]["egress"][0]["ports"][0]["protocol"] = "ICMP"
    files = build_files(read_repository(publisher.repo), counter=4, commit="bad", group="gateways")
    data = json.loads(files["edgetrust/networkpolicies/data.json"])
    data["edge-gateway"].append({**bad, "metadata": {"name": "bad", "namespace": "workloads"}})
    files["edgetrust/networkpolicies/data.json"] = json.dumps(data).encode()
    publisher.publish(4, sign_files(files, publisher.key))
    invalid = await agent.sync_once()
    assert invalid.result == "refused"
    assert "protocol: 'ICMP'" in invalid.error
    assert set(live(kube)) == {"default-deny", "allow-dns", "someone-elses"}

    # all or nothing: one policy in a namespace that does not exist, so the API server refuses it
    ghost = yaml.safe_load((publisher.repo / "networkpolicies" / "edge-gateway" / "allow-dns.yaml").read_text())
    ghost["metadata"] = {"name": "ghost", "namespace": "no-such-namespace"}
    (publisher.repo / "networkpolicies" / "edge-gateway" / "ghost.yaml").write_text(yaml.safe_dump(ghost))
    (publisher.repo / "networkpolicies" / "edge-gateway" / "allow-web.yaml").write_text(
        (publisher.repo / "networkpolicies" / "edge-store" / "allow-web.yaml").read_text().replace("shop", "workloads")
    )
    publisher.publish(5)
    failed = await agent.sync_once()
    assert failed.result == "failed"
    assert "no-such-namespace" in failed.error
    assert set(live(kube)) == {"default-deny", "allow-dns", "someone-elses"}, "nothing of a refused bundle is applied"

    # restart with the hub (here: the drop) gone, after someone deleted one of our policies
    with kube.client() as api:
        api.delete("/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies/allow-dns")
    publisher.drop.unlink()
    restarted, _ = agent_for(kube, publisher, tmp_path / "state")

    started, offline = await restarted.start(), await restarted.sync_once()
    assert started is not None
    assert set(live(kube)) == {"default-deny", "allow-dns", "someone-elses"}
    assert offline.result == "unreachable"
    reports = list(restarted.state.queued_reports())
    assert reports[-1]["result"] == "unreachable"
    assert "failed" in [r["result"] for r in reports]
    await client.aclose()
