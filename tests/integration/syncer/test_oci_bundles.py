"""Bundles through an OCI registry (the real distribution registry over TLS): pushed by trustctl, read by the
real oras, pulled by the agent (applying to the in-memory target: real applies are tested in
test_agent_kube.py); a tag re-pointed at a bundle signed by someone else is refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.oci import BundleRegistry, OCIReference, registry_settings
from edgetrust.bundles.signing import SigningKey, load_verification_keys, sign_files
from localpeers.peers import peer
from localpeers.registry import running_registry
from localpeers.simulation import InMemoryCluster
from localpeers.tlsca import TestCA
from localpeers.webhook import LOOPBACK_SITE
from syncer.agent import SyncAgent
from syncer.sources import OCISource
from syncer.state import AgentState

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"


def signed(counter: int, key: ec.EllipticCurvePrivateKey, key_id: str = "ci-1") -> bytes:
    return pack(
        sign_files(
            build_files(
                read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE),
                counter=counter,
                commit="oci",
                group="gateways",
            ),
            SigningKey(key_id, key),
        )
    )


def test_push_pull_and_a_forged_tag(tmp_path: Path) -> None:
    signing = ec.generate_private_key(ec.SECP256R1())
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ca = TestCA(tmp_path / "ca")
    with running_registry(tmp_path / "registry", ca) as registry:
        first = tmp_path / "v1.tar.gz"
        first.write_bytes(signed(1, signing))
        reference = f"{registry.host}/policy/gateways:current"
        pushed = subprocess.run(
            [
                str(Path(sys.executable).parent / "trustctl"),
                "policy",
                "push",
                str(first),
                reference,
                "--registry-ca",
                str(ca.ca_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert "pushed 000000000001-oci" in pushed.stdout

        pulled = tmp_path / "oras-pull"
        pulled.mkdir()
        registry.run(peer("oras"), "pull", "--ca-file", str(ca.ca_file), "-o", str(pulled), reference, cwd=pulled)
        assert (pulled / "bundle.tar.gz").read_bytes() == first.read_bytes(), "oras got another blob than we pushed"

        keys = load_verification_keys({"ci-1": public})
        forger = ec.generate_private_key(ec.SECP256R1())

        async def scenario() -> tuple[str, str, str]:
            # one event loop for the client's whole life: it is async, its connections belong to that loop
            client = BundleRegistry(registry_settings(ca.ca_file))
            try:
                agent = SyncAgent(
                    cluster="site-a",
                    group="gateways",
                    site_class="edge-gateway",
                    source=OCISource(client, OCIReference.parse(reference)),
                    keys=keys,
                    kube=InMemoryCluster(),
                    state=AgentState(tmp_path / "state"),
                )
                first, again = (await agent.sync_once()).result, (await agent.sync_once()).result
                await client.push(OCIReference.parse(reference), signed(2, forger))  # same key id, another key
                return first, again, (await agent.sync_once()).error
            finally:
                await client.aclose()

        first_result, second_result, forged = asyncio.run(scenario())
        assert (first_result, second_result) == ("applied", "not-modified")
        assert "does not verify under key 'ci-1'" in forged
