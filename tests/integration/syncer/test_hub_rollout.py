"""Policy distribution end to end: a publisher pushes a signed bundle to trustd over mTLS; two clusters (each a
real kube-apiserver) long-poll for it with their SVIDs; the canary gets it first, the next wave only after the
canary reported it applied; status reaches the hub; a cluster outside the fleet gets nothing."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.hub import RunningHub, running_policy_hub
from localpeers.kube import KubeAPI, running_kube_apiserver
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from localpeers.webhook import LOOPBACK_SITE, write_site_parameters
from syncer.agent import SyncAgent
from syncer.kube import KubeClient, KubeConfig
from syncer.sources import HubSource, hub_reporter, hub_session
from syncer.state import AgentState

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"


def svid_files(hub: RunningHub, path: str, directory: Path) -> tuple[Path, Path]:
    return issue_svid_files(hub.hub.ca, f"spiffe://edge.example{path}", directory)


def mtls(hub: RunningHub, cert: Path, key: Path) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(hub.ca_bundle))
    context.load_cert_chain(str(cert), str(key))
    return httpx.AsyncClient(base_url=hub.url, verify=context, timeout=30)


def test_canary_then_wave_over_mtls_with_long_polls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    signing = ec.generate_private_key(ec.SECP256R1())
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fleet = {
        "groups": {
            "gateways": {
                "matchLabels": {"site-class": "edge-gateway"},
                "canary": ["site-a"],
                "waves": [100],
                "publishers": ["spiffe://edge.example/operator/ci"],
            }
        },
        "clusters": {
            "site-a": {"labels": {"site-class": "edge-gateway"}},
            "site-b": {"labels": {"site-class": "edge-gateway"}},
        },
    }
    with ExitStack() as stack:
        hub = stack.enter_context(running_policy_hub(tmp_path, fleet=fleet, publisher_keys={"ci-1": public}))
        kubes = {
            name: stack.enter_context(running_kube_apiserver(tmp_path / name, ca)) for name in ("site-a", "site-b")
        }
        for api in kubes.values():
            with api.client() as client:
                assert client.post("/api/v1/namespaces", json={"metadata": {"name": "workloads"}}).status_code == 201
        asyncio.run(scenario(hub, kubes, tmp_path, SigningKey("ci-1", signing)))


async def scenario(hub: RunningHub, kubes: dict[str, KubeAPI], work: Path, signing: SigningKey) -> None:
    publisher = mtls(hub, *svid_files(hub, "/operator/ci", work / "publisher"))
    agents: dict[str, SyncAgent] = {}
    clients: list[Any] = [publisher]
    sessions = []
    for name, api in kubes.items():
        cert, key = svid_files(hub, f"/cluster/{name}", work / name / "svid")
        context = ssl.create_default_context(cafile=str(hub.ca_bundle))
        context.load_cert_chain(str(cert), str(key))
        http = hub_session(hub.url, context)
        kube = KubeClient(KubeConfig(api.url, api.token, api.ca_file))
        sessions.append(http)
        clients.append(kube)
        agents[name] = SyncAgent(
            cluster=name,
            group="gateways",
            site_class="edge-gateway",
            source=HubSource("/v1/policy/bundle", http, wait_s=5),
            keys=hub.hub.policy.publisher_keys if hub.hub.policy else {},
            kube=kube,
            state=AgentState(work / name / "state"),
            reporter=hub_reporter("/v1/policy/status", http),
        )

    # nothing published yet: both long polls come back empty
    assert (await agents["site-a"].run_once()).result == "not-modified"

    stranger = mtls(hub, *svid_files(hub, "/cluster/not-in-fleet", work / "stranger"))
    clients.append(stranger)
    assert (await stranger.get("/v1/policy/bundle")).status_code == 403
    assert (await stranger.post("/v1/policy/bundles/gateways", content=b"x")).status_code == 403

    waiting_b = asyncio.create_task(agents["site-b"].run_once())  # site-b long-polls through the publish
    blob = pack(
        sign_files(
            build_files(
                read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=1, commit="abc", group="gateways"
            ),
            signing,
        )
    )
    published = await publisher.post("/v1/policy/bundles/gateways", content=blob)
    assert published.status_code == 200, published.text
    view = published.json()
    assert [w["clusters"] for w in view["waves"]] == [["site-a"], ["site-b"]]
    assert [w["open"] for w in view["waves"]] == [True, False]

    canary = await agents["site-a"].run_once()
    assert canary.result == "applied"
    assert list(agents["site-a"].state.queued_reports())  # its report rides on its next poll
    next_poll_a = asyncio.create_task(agents["site-a"].run_once())
    outcome_b = await waiting_b  # woken by the wave opening once site-a's report arrived
    assert outcome_b.result == "applied", outcome_b
    await agents["site-b"].flush_reports()  # or goes on its own (what `edgetrust-syncer --once` does)
    assert not list(agents["site-b"].state.queued_reports())

    rollout = (await publisher.get("/v1/policy/rollouts/gateways")).json()
    assert rollout["complete"] is True
    assert rollout["waves"][1]["applied"] == ["site-b"]
    assert (await next_poll_a).result == "not-modified"
    assert not list(agents["site-a"].state.queued_reports())

    for name, api in kubes.items():
        with api.client() as client:
            names = {
                i["metadata"]["name"]
                for i in client.get("/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies").json()["items"]
            }
        assert names == {"default-deny", "allow-dns", "allow-hub"}, name

    stale = await publisher.post("/v1/policy/bundles/gateways", content=blob)
    assert stale.status_code == 409  # a conflict with the stored state (not newer), not a refusal
    assert "not newer" in stale.json()["reason"]
    for client in clients:
        await client.aclose()
    for session in sessions:
        await session.close()


def test_trustctl_publish_rollout_status_and_rollback(tmp_path: Path) -> None:
    signing = ec.generate_private_key(ec.SECP256R1())
    key = tmp_path / "ci.key"
    key.write_bytes(
        signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    clusters = {f"site-{i}": {"labels": {"site-class": "edge-gateway"}} for i in range(10)}
    fleet = {
        "groups": {
            "gateways": {
                "matchLabels": {"site-class": "edge-gateway"},
                "canary": ["site-0"],
                "waves": [50, 100],
                "publishers": ["spiffe://edge.example/operator/ci"],
            }
        },
        "clusters": clusters,
    }
    trustctl = str(Path(sys.executable).parent / "trustctl")
    with running_policy_hub(tmp_path, fleet=fleet, publisher_keys={"ci-1": public}) as hub:
        cert, svid_key = svid_files(hub, "/operator/ci", tmp_path / "publisher")
        hub_args = [
            "--hub",
            hub.url,
            "--ca-bundle",
            str(hub.ca_bundle),
            "--svid",
            str(cert),
            "--svid-key",
            str(svid_key),
        ]

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([trustctl, "policy", *argv], capture_output=True, text=True, timeout=60)

        site = write_site_parameters(tmp_path / "site.yaml")  # the library names no registry: the site's do
        first = tmp_path / "v1.tar.gz"
        built = run(
            "build",
            "--group",
            "gateways",
            str(REPO_POLICIES),
            "--parameters",
            str(site),
            "--out",
            str(first),
            "--counter",
            "1",
            "--commit",
            "aaaa",
            "--key",
            str(key),
            "--key-id",
            "ci-1",
        )
        assert built.returncode == 0, built.stderr
        published = run("publish", str(first), "--group", "gateways", *hub_args)
        assert published.returncode == 0, published.stderr
        assert "wave 0 [" in published.stdout
        assert "0/1 applied (open)" in published.stdout
        assert "0/5 applied (waiting)" in published.stdout  # 50% of the 9 others, rounded up
        status = run("rollout", "status", "gateways", "--json", *hub_args)
        assert [len(w["clusters"]) for w in json.loads(status.stdout)["waves"]] == [1, 5, 4]

        second = tmp_path / "v2.tar.gz"
        run(
            "build",
            "--group",
            "gateways",
            str(REPO_POLICIES),
            "--parameters",
            str(site),
            "--out",
            str(second),
            "--counter",
            "2",
            "--commit",
            "bbbb",
            "--key",
            str(key),
            "--key-id",
            "ci-1",
        )
        assert run("publish", str(second), "--group", "gateways", *hub_args).returncode == 0
        replay = run("publish", str(first), "--group", "gateways", *hub_args)
        assert replay.returncode == 1
        assert "not newer" in replay.stderr
        rolled = run("rollback", "gateways", "--to", str(first), "--key", str(key), "--key-id", "ci-1", *hub_args)
        assert rolled.returncode == 0, rolled.stderr
        assert "as revision 000000000003-aaaa" in rolled.stdout
        assert hub.hub.policy is not None
        current = hub.hub.policy.rollout("gateways")
        assert current is not None
        assert current.counter == 3
