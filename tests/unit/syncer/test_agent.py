"""The agent's decisions without a cluster: the simulation target stands in for the API server here."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, load_verification_keys, sign_files
from localpeers.simulation import InMemoryCluster
from localpeers.webhook import LOOPBACK_SITE
from syncer.agent import SyncAgent
from syncer.sources import FileSource
from syncer.state import AgentState

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"


def test_the_same_bundle_fetched_again_is_unchanged_not_a_replay(tmp_path: Path) -> None:
    signing = ec.generate_private_key(ec.SECP256R1())
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    drop = tmp_path / "bundle.tar.gz"
    drop.write_bytes(
        pack(
            sign_files(
                build_files(
                    read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=4, commit="x", group="gateways"
                ),
                SigningKey("k", signing),
            )
        )
    )
    cluster = InMemoryCluster()

    def agent() -> SyncAgent:
        return SyncAgent(
            cluster="c",
            group="gateways",
            site_class="edge-gateway",
            source=FileSource(drop),  # a new source has no memory of what it served: the answer comes again
            keys=load_verification_keys({"k": public}),
            kube=cluster,
            state=AgentState(tmp_path / "state"),
        )

    async def scenario() -> tuple[str, str, int]:
        first = await agent().sync_once()
        writes = cluster.writes
        again = await agent().sync_once()
        return first.result, again.result, cluster.writes - writes

    first, again, writes = asyncio.run(scenario())
    assert (first, again, writes) == ("applied", "unchanged", 0)
