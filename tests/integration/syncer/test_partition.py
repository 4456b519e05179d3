"""A real partition between hub and cluster: trustd runs in its own network namespace behind a veth pair; the
link is cut (`ip link set down`) and degraded (`tc netem` delay and loss, or where the kernel lacks netem, as
on this machine, a `tbf` token bucket that delays and drops). The cluster keeps enforcing what it
verified, a restarted agent re-applies it from disk, and after the heal the agent converges and its queued
reports reach the hub."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, load_verification_keys, sign_files
from edgetrust.spiffe.id import TrustDomain
from localpeers.hub import init_trust_files
from localpeers.kube import KubeAPI, running_kube_apiserver
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from localpeers.webhook import write_site_parameters
from syncer.agent import SyncAgent
from syncer.kube import KubeClient, KubeConfig
from syncer.sources import HubSource, hub_reporter, hub_session
from syncer.state import AgentState
from tests.support.netns import Link, namespace_link
from trustd.server.ca import SpiffeCA

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"
PORT = 8443


def names(kube: KubeAPI) -> set[str]:
    with kube.client() as client:
        items = client.get("/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies").json()["items"]
    return {i["metadata"]["name"] for i in items}


def start_hub(link: Link, work: Path, public_pem: bytes) -> subprocess.Popen[bytes]:
    (work / "keys").mkdir()
    (work / "keys" / "ci-1.pem").write_bytes(public_pem)
    (work / "ek-roots").mkdir()
    (work / "refvalues.yaml").write_text(
        yaml.safe_dump({"device_classes": {"none": {"pcr_bank": "sha256", "pcrs": {0: ["00" * 32]}}}})
    )
    fleet = {
        "groups": {
            "all": {"matchLabels": {"site-class": "edge-gateway"}, "publishers": ["spiffe://edge.example/operator/ci"]}
        },
        "clusters": {"site-a": {"labels": {"site-class": "edge-gateway"}}},
    }
    (work / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    init_trust_files(work / "hub")  # `trustd ca init`
    shutil.copy(work / "hub" / "ca" / "ca.crt", work / "ek-roots" / "placeholder.pem")
    env = {**os.environ, "TRUSTD_SERVER_IP_ADDRESSES": f'["{link.peer_address}"]'}
    argv = link.exec_argv(
        str(Path(sys.executable).parent / "trustd"), "serve", "--data-dir", str(work / "hub"),
        "--trust-domain", "edge.example", "--ek-roots", str(work / "ek-roots"),
        "--reference-values", str(work / "refvalues.yaml"), "--host", link.peer_address, "--port", str(PORT),
        "--fleet", str(work / "fleet.yaml"), "--policy-keys", str(work / "keys"),
    )  # fmt: skip
    with (work / "trustd.log").open("wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log)


def publish_inside(link: Link, work: Path, blob: bytes) -> None:
    """The publisher sits with the hub: publishing works even while the edge is cut off."""
    path = work / f"bundle-{time.monotonic_ns()}.tar.gz"
    path.write_bytes(blob)
    script = "import sys; from pathlib import Path; from trustd.server.policy.distribution import PolicyBundles"
    del script
    # trustd holds the published bundles in its data directory; publish through its API from inside the namespace
    ca = SpiffeCA.load(work / "hub" / "ca", trust_domain=TrustDomain.parse("edge.example"))
    cert, key = issue_svid_files(ca, "spiffe://edge.example/operator/ci", work / "publisher")
    del cert, key
    argv = link.exec_argv(
        "curl", "-sS", "--fail-with-body", "--cacert", str(work / "hub" / "ca" / "ca.crt"),
        "--cert", str(work / "publisher" / "svid.pem"), "--key", str(work / "publisher" / "svid.key"),
        "--data-binary", f"@{path}", f"https://{link.peer_address}:{PORT}/v1/policy/bundles/all",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_partition_restart_bad_link_and_heal(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is missing: apt-get install curl", pytrace=False)
    signing = ec.generate_private_key(ec.SECP256R1())
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = SigningKey("ci-1", signing)
    repo = tmp_path / "repo"
    shutil.copytree(REPO_POLICIES, repo)
    write_site_parameters(repo / "parameters.yaml")  # the site's registries
    with namespace_link("hub") as link, running_kube_apiserver(tmp_path / "kube", TestCA(tmp_path / "ca")) as kube:
        hub = start_hub(link, tmp_path, public)
        try:
            hub_ca = tmp_path / "hub" / "ca" / "ca.crt"
            deadline = time.monotonic() + 30
            while (
                subprocess.run(
                    link.exec_argv(
                        "curl", "-sf", "--cacert", str(hub_ca), f"https://{link.peer_address}:{PORT}/healthz"
                    ),
                    capture_output=True,
                ).returncode
                != 0
            ):
                log = (tmp_path / "trustd.log").read_text()[-2000:]
                assert time.monotonic() < deadline, log
                assert hub.poll() is None, log
                time.sleep(0.2)
            with kube.client() as client:
                client.post("/api/v1/namespaces", json={"metadata": {"name": "workloads"}}).raise_for_status()
            ca = SpiffeCA.load(tmp_path / "hub" / "ca", trust_domain=TrustDomain.parse("edge.example"))
            cert, private = issue_svid_files(ca, "spiffe://edge.example/cluster/site-a", tmp_path / "site-a")
            asyncio.run(scenario(link, kube, tmp_path, key, public, repo, hub_ca, cert, private))
            # the hub saw the site's reports once the link healed
            status = subprocess.run(
                link.exec_argv("curl", "-sS", "--cacert", str(hub_ca),
                               "--cert", str(tmp_path / "publisher" / "svid.pem"),
                               "--key", str(tmp_path / "publisher" / "svid.key"),
                               f"https://{link.peer_address}:{PORT}/v1/policy/rollouts/all"),
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert '"applied":["site-a"]' in status.stdout.replace(" ", ""), status.stdout
        finally:
            hub.terminate()
            hub.wait(timeout=15)


async def scenario(
    link: Link,
    kube: KubeAPI,
    work: Path,
    key: SigningKey,
    public: bytes,
    repo: Path,
    hub_ca: Path,
    cert: Path,
    private: Path,
) -> None:
    context = ssl.create_default_context(cafile=str(hub_ca))
    context.load_cert_chain(str(cert), str(private))
    keys = load_verification_keys({"ci-1": public})
    state_dir = work / "site-a" / "state"

    def agent(http: aiohttp.ClientSession, target: KubeClient, timeout_s: float = 30) -> SyncAgent:
        return SyncAgent(
            cluster="site-a",
            group="all",
            site_class="edge-gateway",
            source=HubSource("/v1/policy/bundle", http, wait_s=1, timeout_s=timeout_s),
            keys=keys,
            kube=target,
            state=AgentState(state_dir),
            reporter=hub_reporter("/v1/policy/status", http),
        )

    base = f"https://{link.peer_address}:{PORT}"
    target = KubeClient(KubeConfig(kube.url, kube.token, kube.ca_file))
    publish_inside(
        link, work, pack(sign_files(build_files(read_repository(repo), counter=1, commit="one", group="all"), key))
    )
    async with hub_session(base, context) as http:
        first = await agent(http, target, 5).run_once()
        assert first.result == "applied", first
    assert names(kube) == {"default-deny", "allow-dns", "allow-hub"}

    link.down()  # partition
    (repo / "networkpolicies" / "edge-gateway" / "allow-hub.yaml").unlink()
    publish_inside(
        link, work, pack(sign_files(build_files(read_repository(repo), counter=2, commit="two", group="all"), key))
    )
    with kube.client() as client:  # someone deletes a policy while the site is cut off
        client.delete("/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies/allow-dns")
    async with hub_session(base, context) as http:
        restarted = agent(http, target, 3)
        await restarted.start()  # a restart during the partition re-enforces what was verified
        assert names(kube) == {"default-deny", "allow-dns", "allow-hub"}
        cut_off = await restarted.run_once()
        assert cut_off.result == "unreachable", cut_off

    link.up()
    if link.has_netem():  # a bad link: slow and lossy, but the agent gets through
        link.degrade("netem", "delay", "150ms", "loss", "10%")
    else:  # this kernel has no sch_netem: a 64 kbit/s token bucket with a short queue delays and drops instead
        link.degrade("tbf", "rate", "64kbit", "burst", "4kb", "latency", "50ms")
    async with hub_session(base, context) as http:
        healed = agent(http, target)
        await healed.start()
        outcome = await healed.run_once()
        for _ in range(5):
            if outcome.result == "applied":
                break
            outcome = await healed.run_once()
        assert outcome.result == "applied", outcome
        assert outcome.revision == "000000000002-two"
        # the next poll carries every report queued while offline, and this apply's
        assert (await healed.run_once()).result == "not-modified"
    link.heal()
    assert names(kube) == {"default-deny", "allow-dns"}
    reports = [r["result"] for r in AgentState(state_dir).queued_reports()]
    assert reports == [], f"reports left undelivered: {reports}"
    await target.aclose()
