"""What wakes a held long poll: a change in what its cluster is served, not every flush of reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.webhook import LOOPBACK_SITE
from trustd.server.policy.distribution import Fleet, PolicyBundles
from trustd.server.store import open_store

REPO_POLICIES = Path(__file__).resolve().parents[4] / "policies"


def bundles_of(tmp_path: Path, *, publish: bool = True) -> PolicyBundles:
    path = tmp_path / "fleet.yaml"
    clusters = {f"s{i:02d}": {"labels": {"k": "v"}} for i in range(21)}
    group = {"matchLabels": {"k": "v"}, "canary": ["s00"], "waves": [100], "advanceAt": 90}
    path.write_text(yaml.safe_dump({"groups": {"g": {**group, "publishers": ["spiffe://t/ci"]}}, "clusters": clusters}))
    key = ec.generate_private_key(ec.SECP256R1())
    bundles = PolicyBundles(open_store("sqlite://"), Fleet.load(path), {"k": key.public_key()})
    if publish:
        files = build_files(read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=1, commit="c", group="g")
        bundles.publish("g", pack(sign_files(files, SigningKey("k", key))), publisher="spiffe://t/ci")
    return bundles


def test_a_flush_that_changes_nothing_served_wakes_no_held_poll_and_a_wave_opening_does(tmp_path: Path) -> None:
    bundles = bundles_of(tmp_path)
    rollout = bundles.rollout("g")
    assert rollout is not None

    async def scenario() -> tuple[bool, bool]:
        held = asyncio.create_task(bundles.wait_for_change("s05", None, 30.0))
        await asyncio.sleep(0.05)
        assert bundles.long_polls_waiting("g")
        waiting = bundles._changed["g"]  # the event the held poll waits on
        bundles.report("s00", {"revision": "other", "result": "applied"})  # recorded, serves nothing new
        bundles.clusters.syncer_report("s01", {"revision": rollout.revision, "result": "applied"})
        rollout.set_networkpolicies("s01", "applied")  # an op to write, no wave opens
        bundles.flush()
        await asyncio.sleep(0.05)
        woken_by_flush = waiting.is_set()
        bundles.report("s00", {"revision": rollout.revision, "result": "applied"})  # the canary: wave 1 opens
        answer = await asyncio.wait_for(held, 5)
        return woken_by_flush, answer is not None

    woken_by_flush, answered = asyncio.run(scenario())
    assert not woken_by_flush
    assert answered  # s05 is in the wave that opened
