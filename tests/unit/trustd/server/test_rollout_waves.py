"""Wave gating on the hub: the canary wave must apply everywhere; later waves open at the group's advanceAt
share, so one offline site does not hold a fleet back; failures past the threshold halt."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.webhook import LOOPBACK_SITE
from trustd.server.policy.distribution import Fleet, PolicyBundles, PolicyDistributionError
from trustd.server.store import open_store

REPO_POLICIES = Path(__file__).resolve().parents[4] / "policies"


def fleet_file(tmp_path: Path, advance_at: object) -> Path:
    path = tmp_path / "fleet.yaml"
    clusters = {f"s{i:02d}": {"labels": {"k": "v"}} for i in range(21)}
    group = {
        "matchLabels": {"k": "v"},
        "canary": ["s00"],
        "waves": [100],
        "advanceAt": advance_at,
        "publishers": ["spiffe://t/ci"],
    }
    path.write_text(yaml.safe_dump({"groups": {"g": group}, "clusters": clusters}))
    return path


def published(tmp_path: Path, advance_at: int) -> PolicyBundles:
    key = ec.generate_private_key(ec.SECP256R1())
    fleet = Fleet.load(fleet_file(tmp_path, advance_at))
    bundles = PolicyBundles(open_store("sqlite://"), fleet, {"k": key.public_key()})
    files = build_files(read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=1, commit="c", group="g")
    bundles.publish("g", pack(sign_files(files, SigningKey("k", key))), publisher="spiffe://t/ci")
    return bundles


def test_the_canary_needs_all_and_later_waves_their_share(tmp_path: Path) -> None:
    bundles = published(tmp_path, 90)
    rollout = bundles.rollout("g")
    assert rollout is not None
    revision = rollout.revision
    assert bundles.bundle_for("s05") is None  # only the canary has it
    bundles.report("s00", {"revision": revision, "result": "applied"})
    assert rollout.opened == 1
    assert bundles.bundle_for("s05") is not None
    # a wave of 20: 90 % is 18 sites; two may be offline without holding the rollout
    for i in range(1, 19):
        bundles.report(f"s{i:02d}", {"revision": revision, "result": "applied"})
    assert rollout.view()["complete"] is False
    assert rollout.wave_done()


def test_failures_past_the_threshold_halt(tmp_path: Path) -> None:
    bundles = published(tmp_path, 100)
    rollout = bundles.rollout("g")
    assert rollout is not None
    bundles.report("s00", {"revision": rollout.revision, "result": "failed", "error": "apply refused"})
    assert rollout.halted
    assert bundles.bundle_for("s00") is None  # a halted rollout hands out the previous revision (none here)


@pytest.mark.parametrize("bad", [0, 101, "most", True])
def test_advance_at_must_be_a_percentage(tmp_path: Path, bad: object) -> None:
    with pytest.raises(
        PolicyDistributionError, match=r"groups\.g\.advanceAt: must be a whole percentage from 1 to 100, not "
    ):
        Fleet.load(fleet_file(tmp_path, bad))


def test_a_fleet_file_with_the_old_top_level_publishers_is_refused_saying_what_to_write(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"groups": {"g": {"matchLabels": {"k": "v"}}}, "publishers": ["spiffe://t/ci"]}))
    with pytest.raises(PolicyDistributionError, match=r"groups\.<group>\.publishers"):
        Fleet.load(path)


def test_publishers_are_authorized_per_group_and_bundles_bound_to_theirs(tmp_path: Path) -> None:
    bundles = published(tmp_path, 90)
    key = ec.generate_private_key(ec.SECP256R1())
    other = PolicyBundles(open_store("sqlite://"), bundles.fleet, {"k": key.public_key()})
    files = build_files(read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=2, commit="c", group="g")
    with pytest.raises(PolicyDistributionError, match="may not publish to cluster group 'g'"):
        other.publish("g", pack(sign_files(files, SigningKey("k", key))), publisher="spiffe://t/someone")
    elsewhere = build_files(read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=2, commit="c", group="h")
    with pytest.raises(PolicyDistributionError, match="signed for cluster group 'h', not 'g'"):
        other.publish("g", pack(sign_files(elsewhere, SigningKey("k", key))), publisher="spiffe://t/ci")
    assert other.rollout("g") is None


def test_a_rollout_read_before_a_newer_publish_here_does_not_replace_it(tmp_path: Path) -> None:
    store = open_store("sqlite://")
    key = ec.generate_private_key(ec.SECP256R1())
    bundles = PolicyBundles(store, Fleet.load(fleet_file(tmp_path, 90)), {"k": key.public_key()})
    repository = read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE)
    for counter in (1, 2):
        files = build_files(repository, counter=counter, commit="c", group="g")
        bundles.publish("g", pack(sign_files(files, SigningKey("k", key))), publisher="spiffe://t/ci")
        if counter == 1:
            (stale,) = store.rollouts()  # what a sync on another thread read just before the second publish
    bundles._take(stale)  # that sync goes on and takes it
    assert bundles.rollout("g").counter == 2  # type: ignore[union-attr]
