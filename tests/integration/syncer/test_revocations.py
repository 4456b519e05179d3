"""Revocation end to end: `trustctl fleet revoke` on the hub; the cluster's agent, already in a long poll, hears of
it within a second and keeps the hub-signed list; a real OPA pulls both bundles (policy and revocations, two
signers) from the hub over mTLS; an mTLS service in the cluster refuses the revoked SVID although its
certificate is still valid; the revoked cluster itself is refused by the hub.

The agent's apply goes to the in-memory target here (localpeers/simulation.py): NetworkPolicies on a real
kube-apiserver are test_agent_kube's and test_hub_rollout's subject; this test is about the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.revocations import KEY_ID, RevocationList, RevocationStore, RevokedError
from edgetrust.bundles.signing import SigningKey, load_verification_keys, sign_files
from localpeers.hub import RunningHub, free_port, running_policy_hub
from localpeers.peers import peer
from localpeers.simulation import InMemoryCluster
from localpeers.svid import issue_svid_files
from localpeers.webhook import LOOPBACK_SITE
from syncer.agent import SyncAgent
from syncer.sources import HubSource, hub_reporter, hub_session
from syncer.state import AgentState
from tests.support.two_sites import FLEET, OPERATOR
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"


def mtls(hub: RunningHub, cert: Path, key: Path) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(hub.ca_bundle))
    context.load_cert_chain(str(cert), str(key))
    return httpx.AsyncClient(base_url=hub.url, verify=context, timeout=30)


def hub_args(hub: RunningHub, files: tuple[Path, Path]) -> list[str]:
    return ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(files[0]), "--svid-key", str(files[1])]


def start_opa(hub: RunningHub, cluster: tuple[Path, Path], keys: dict[str, bytes], work: Path) -> tuple[Any, int]:
    port = free_port()
    config = {
        "services": {
            "hub": {
                "url": f"{hub.url}/v1/policy",
                "tls": {"ca_cert": str(hub.ca_bundle)},
                "credentials": {"client_tls": {"cert": str(cluster[0]), "private_key": str(cluster[1])}},
            }
        },
        "keys": {key_id: {"algorithm": "ES256", "key": pem.decode()} for key_id, pem in keys.items()},
        "bundles": {
            "policy": {
                "service": "hub",
                "resource": "bundle",
                "signing": {"keyid": "ci-1"},
                "polling": {"min_delay_seconds": 1, "max_delay_seconds": 1},
            },
            "revocations": {
                "service": "hub",
                "resource": "revocations",
                "signing": {"keyid": KEY_ID},
                "polling": {"min_delay_seconds": 1, "max_delay_seconds": 1},
            },
        },
    }
    (work / "opa.yaml").write_text(yaml.safe_dump(config))
    log = (work / "opa.log").open("wb")
    process = subprocess.Popen(
        [str(peer("opa")), "run", "--server", "--addr", f"127.0.0.1:{port}", "--config-file", str(work / "opa.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, port


def opa_data(port: int, path: str) -> object:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/data/{path}", timeout=2).json().get("result")
    except httpx.HTTPError:
        return None


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def mtls_server_refusing_revoked(roots: Path, cert: Path, key: Path, revocations: Path) -> tuple[int, list[str]]:
    """An in-cluster service: mTLS with the trust domain's roots, then the agent's revocation list."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    context.load_verify_locations(str(roots))
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    verdicts: list[str] = []

    def serve() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            with context.wrap_socket(connection, server_side=True) as tls:
                try:
                    spiffe_id = RevocationList.load_json(revocations).check_certificate(
                        tls.getpeercert(binary_form=True) or b""
                    )
                    verdicts.append(f"accepted {spiffe_id}")
                    tls.sendall(b"ok")
                except RevokedError as exc:
                    verdicts.append(f"refused: {exc}")
                    tls.sendall(b"no")
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1]), verdicts


def tls_call(port: int, roots: Path, cert: Path, key: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(roots))
    context.check_hostname = False
    context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        return tls.recv(2)


def test_revocation_reaches_the_agent_opa_and_in_cluster_services(tmp_path: Path) -> None:
    signing = ec.generate_private_key(ec.SECP256R1())
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with running_policy_hub(tmp_path / "hub", fleet=FLEET, publisher_keys={"ci-1": public}) as hub:
        ca = hub.hub.ca
        site_a = issue_svid_files(ca, "spiffe://edge.example/cluster/site-a", tmp_path / "site-a")
        site_b = issue_svid_files(ca, "spiffe://edge.example/cluster/site-b", tmp_path / "site-b")
        operator = issue_svid_files(ca, OPERATOR, tmp_path / "operator")
        publisher = issue_svid_files(ca, "spiffe://edge.example/operator/ci", tmp_path / "publisher")
        service = issue_svid_files(ca, "spiffe://edge.example/cluster/site-a/service/api", tmp_path / "service")
        revocation_pem = hub.hub.revocations.public_key_pem
        bundle = tmp_path / "bundle.tar.gz"
        bundle.write_bytes(
            pack(
                sign_files(
                    build_files(
                        read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=1, commit="abc", group="all"
                    ),
                    SigningKey("ci-1", signing),
                )
            )
        )
        assert trustctl(["policy", "publish", str(bundle), "--group", "all", *hub_args(hub, publisher)]) == 0

        opa, opa_port = start_opa(hub, site_a, {"ci-1": public, KEY_ID: revocation_pem}, tmp_path)
        out = tmp_path / "cluster" / "revocations.json"
        try:

            async def scenario() -> tuple[float, str]:
                context = ssl.create_default_context(cafile=str(hub.ca_bundle))
                context.load_cert_chain(str(site_a[0]), str(site_a[1]))
                async with hub_session(hub.url, context) as http, mtls(hub, *site_b) as http_b:
                    agent = SyncAgent(
                        cluster="site-a",
                        group="all",
                        site_class="edge-store",
                        source=HubSource(
                            "/v1/policy/bundle", http, wait_s=20, revocations_url="/v1/policy/revocations"
                        ),
                        keys=load_verification_keys({"ci-1": public}),
                        kube=InMemoryCluster(),
                        state=AgentState(tmp_path / "state-a"),
                        reporter=hub_reporter("/v1/policy/status", http),
                        revocations=RevocationStore(
                            tmp_path / "state-a", load_verification_keys({KEY_ID: revocation_pem}), out
                        ),
                    )
                    first = await agent.run_once()
                    assert first.result == "applied", first
                    assert agent.revocations is not None
                    assert agent.revocations.current.spiffe_ids == frozenset()
                    assert (await agent.run_once()).result == "not-modified"  # holds the list: no early wake
                    # the agent sits in its long poll; the operator revokes site-b meanwhile
                    polling = asyncio.create_task(agent.run_once())
                    await asyncio.sleep(0.5)
                    revoked_at = time.monotonic()
                    code = await asyncio.to_thread(
                        trustctl,
                        [
                            "fleet",
                            "revoke",
                            "spiffe://edge.example/cluster/site-b",
                            "--reason",
                            "stolen",
                            *hub_args(hub, operator),
                        ],
                    )
                    assert code == 0
                    await asyncio.wait_for(polling, timeout=10)
                    heard = time.monotonic() - revoked_at
                    refused = await http_b.get("/v1/policy/bundle")
                    return heard, f"{refused.status_code} {refused.json()['reason']}"

            heard, refused = asyncio.run(scenario())
            assert heard < 5, f"the agent heard of the revocation after {heard:.1f} s, not within the long poll"
            assert refused == "403 spiffe://edge.example/cluster/site-b is revoked"
            held = RevocationList.load_json(out)
            assert held.spiffe_ids == {"spiffe://edge.example/cluster/site-b"}
            assert held.counter == 1

            roots = hub.ca_bundle
            port, verdicts = mtls_server_refusing_revoked(roots, service[0], service[1], out)
            assert tls_call(port, roots, *site_a) == b"ok"
            assert tls_call(port, roots, *site_b) == b"no"
            assert verdicts == [
                "accepted spiffe://edge.example/cluster/site-a",
                "refused: spiffe://edge.example/cluster/site-b is revoked (revocation list 000000000001-revocations)",
            ]

            wait_for(
                lambda: (
                    opa_data(opa_port, "edgetrust/revocations/spiffe_ids") == ["spiffe://edge.example/cluster/site-b"]
                ),
                20,
                "OPA to load the revocation bundle from the hub",
            )
            policies = opa_data(opa_port, "edgetrust/networkpolicies")
            assert isinstance(policies, dict), "OPA loaded the policy bundle too"
            assert "edge-store" in policies
        finally:
            opa.terminate()
            opa.wait(timeout=10)

        # a cluster is not an operator: it can neither revoke nor list
        assert trustctl(["fleet", "revoke", "spiffe://edge.example/cluster/site-a", *hub_args(hub, site_a)]) == 1
        assert hub.hub.revocations.current().counter == 1
        listed = trustctl_json(["fleet", "list", "--json", *hub_args(hub, operator)])
        assert listed["revocations"] == 1
        assert listed["clusters"]["site-a"]["result"] == "applied"


def trustctl_json(argv: list[str]) -> dict[str, Any]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert trustctl(argv) == 0
    found = json.loads(buffer.getvalue())
    assert isinstance(found, dict)
    return found
