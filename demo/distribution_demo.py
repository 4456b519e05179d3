"""The policy distribution plane: trustd serves signed bundles to a cluster group; a cluster's syncer agent
long-polls over mTLS with its SVID, verifies, and applies the NetworkPolicies to a real kube-apiserver."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust._internal import hubclient
from localpeers.hub import RunningHub, running_policy_hub
from localpeers.kube import running_kube_apiserver
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from localpeers.webhook import write_site_parameters
from syncer.agent import SyncAgent
from syncer.kube import KubeClient, KubeConfig
from syncer.sources import HubSource, hub_reporter, hub_session
from syncer.state import AgentState


def _say(text: str = "") -> None:
    print(text, flush=True)


def _svid(hub: RunningHub, path: str, directory: Path) -> tuple[Path, Path]:
    return issue_svid_files(hub.hub.ca, f"spiffe://edge.example{path}", directory)


def main() -> int:
    root = Path(".demo/distribution").resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    venv_bin = Path(sys.executable).parent
    ok: dict[str, bool] = {}

    _say("== 1. The policy repository (policies/) and the publisher's ES256 signing key")
    repo = root / "repo"
    shutil.copytree(Path("policies"), repo)
    write_site_parameters(repo / "parameters.yaml")  # the site's registries (the library ships none)
    signing = ec.generate_private_key(ec.SECP256R1())
    key = root / "ci.key"
    key.write_bytes(
        signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fleet: dict[str, object] = {
        "groups": {
            "gateways": {
                "matchLabels": {"site-class": "edge-gateway"},
                "publishers": ["spiffe://edge.example/operator/ci"],
            }
        },
        "clusters": {"site-lyon": {"labels": {"site-class": "edge-gateway"}}},
    }
    ca = TestCA(root / "ca")

    with (
        running_policy_hub(root, fleet=fleet, publisher_keys={"ci-1": public}) as hub,
        running_kube_apiserver(root / "kube", ca) as kube,
    ):
        _say(f"== 2. trustd at {hub.url} serves cluster group 'gateways'; site-lyon's API server at {kube.url}")
        with kube.client() as client:
            client.post("/api/v1/namespaces", json={"metadata": {"name": "workloads"}}).raise_for_status()
        publisher_cert, publisher_key = _svid(hub, "/operator/ci", root / "publisher")
        hub_args = [
            "--hub",
            hub.url,
            "--ca-bundle",
            str(hub.ca_bundle),
            "--svid",
            str(publisher_cert),
            "--svid-key",
            str(publisher_key),
        ]

        def trustctl(*argv: str) -> str:
            done = subprocess.run([str(venv_bin / "trustctl"), "policy", *argv], capture_output=True, text=True)
            for line in (done.stdout + done.stderr).strip().splitlines():
                _say(f"   {line}")
            return done.stdout

        _say("== 3. trustctl policy build + publish (revision 1)")
        bundle = root / "v1.tar.gz"
        trustctl(
            "build",
            str(repo),
            "--out",
            str(bundle),
            "--counter",
            "1",
            "--commit",
            "demo1",
            "--key",
            str(key),
            "--key-id",
            "ci-1",
            "--group",
            "gateways",
        )
        trustctl("publish", str(bundle), "--group", "gateways", *hub_args)

        async def agent_round() -> str:
            cert, private = _svid(hub, "/cluster/site-lyon", root / "site-lyon")
            context = hubclient.tls_context(hub.ca_bundle, cert, private)
            async with hub_session(hub.url, context) as http:
                kube_client = KubeClient(KubeConfig(kube.url, kube.token, kube.ca_file))
                agent = SyncAgent(
                    cluster="site-lyon",
                    group="gateways",
                    site_class="edge-gateway",
                    source=HubSource("/v1/policy/bundle", http, wait_s=2),
                    keys=hub.hub.policy.publisher_keys if hub.hub.policy else {},
                    kube=kube_client,
                    state=AgentState(root / "site-lyon" / "state"),
                    reporter=hub_reporter("/v1/policy/status", http),
                )
                outcome = await agent.run_once()
                await agent.flush_reports()  # one round, then exit: send its report now (as --once does)
                await kube_client.aclose()
                detail = outcome.detail
                return f"{outcome.result} {outcome.revision} (+{len(detail.applied)} -{len(detail.pruned)})"

        _say("== 4. site-lyon's syncer: long poll over mTLS, verify the signature, apply by server-side apply")
        _say(f"   {asyncio.run(agent_round())}")
        with kube.client() as client:
            names = sorted(
                i["metadata"]["name"]
                for i in client.get("/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies").json()["items"]
            )
        _say(f"   NetworkPolicies in workloads: {', '.join(names)}")
        ok["applied"] = names == ["allow-dns", "allow-hub", "default-deny"]

        _say("== 5. allow-hub leaves the repository; revision 2 is published and the agent prunes it")
        (repo / "networkpolicies" / "edge-gateway" / "allow-hub.yaml").unlink()
        bundle2 = root / "v2.tar.gz"
        trustctl(
            "build",
            str(repo),
            "--out",
            str(bundle2),
            "--counter",
            "2",
            "--commit",
            "demo2",
            "--key",
            str(key),
            "--key-id",
            "ci-1",
            "--group",
            "gateways",
        )
        trustctl("publish", str(bundle2), "--group", "gateways", *hub_args)
        _say(f"   {asyncio.run(agent_round())}")
        with kube.client() as client:
            names = sorted(
                i["metadata"]["name"]
                for i in client.get("/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies").json()["items"]
            )
        _say(f"   NetworkPolicies in workloads: {', '.join(names)}")
        ok["pruned"] = names == ["allow-dns", "default-deny"]

        _say("== 6. a replay of revision 1 is refused by the hub; the rollout as the hub sees it")
        trustctl("publish", str(bundle), "--group", "gateways", *hub_args)
        trustctl("rollout", "status", "gateways", *hub_args)
        rollout = hub.hub.policy.rollout("gateways") if hub.hub.policy else None
        ok["reported"] = rollout is not None and "site-lyon" in rollout.applied

    _say("== Summary")
    for title, passed in ok.items():
        _say(f"   {'ok  ' if passed else 'FAIL'} {title}")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
