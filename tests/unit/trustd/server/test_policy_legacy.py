"""A hub upgraded in place keeps its rollouts: what a trustd before issue 17 wrote under <data-dir>/policy is
imported into the store once, each bundle verified again; a forged file is not imported, a second start
imports nothing."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.webhook import LOOPBACK_SITE
from tests.support.fleet_hub import REPO_POLICIES
from trustd.server.policy.distribution import Fleet, PolicyBundles, verified_bundle
from trustd.server.policy.legacy import import_data_dir
from trustd.server.policy.rollout import Rollout
from trustd.server.store import open_store

KEY = ec.generate_private_key(ec.SECP256R1())
KEYS = {"k": KEY.public_key()}


def bundle(counter: int, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    files = build_files(
        read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=counter, commit="c", group="g"
    )
    return pack(sign_files(files, SigningKey("k", key)))


PREVIOUS = bundle(1)


def old_data_dir(tmp_path: Path, *, current: bytes) -> Path:
    """As the hub of issue 16 left it: the group's bundles and its rollout.json (Rollout.state())."""
    group = tmp_path / "policy" / "g"
    group.mkdir(parents=True)
    (group / "1.tar.gz").write_bytes(PREVIOUS)
    (group / "2.tar.gz").write_bytes(current)
    rollout = Rollout(
        "r2", 2, 1, [["s0"], ["s1"]], opened=1, applied={"s0": "applied"}, networkpolicies={"s0": "applied"}
    )
    (group / "rollout.json").write_text(json.dumps(rollout.state()))
    return tmp_path / "policy"


def check(group: str, blob: bytes) -> int:
    return verified_bundle(group, blob, KEYS).counter


def fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.yaml"
    group = {"matchLabels": {"k": "v"}, "canary": ["s0"], "waves": [100], "publishers": ["spiffe://t/ci"]}
    clusters = {name: {"labels": {"k": "v"}} for name in ("s0", "s1")}
    path.write_text(yaml.safe_dump({"groups": {"g": group}, "clusters": clusters}))
    return Fleet.load(path)


def test_a_groups_rollout_and_both_bundles_are_imported_once(tmp_path: Path) -> None:
    current = bundle(2)
    store = open_store("sqlite://")
    assert import_data_dir(store, old_data_dir(tmp_path, current=current), check) == ["g"]
    assert import_data_dir(store, tmp_path / "policy", check) == []  # the next start: nothing more
    assert store.rollout_versions() == {"g": 1}
    bundles = PolicyBundles(store, fleet(tmp_path), KEYS)
    rollout = bundles.rollout("g")
    assert rollout is not None
    assert (rollout.counter, rollout.previous, rollout.opened, rollout.applied) == (2, 1, 1, {"s0": "applied"})
    assert bundles.bundle_for("s1") == bundles.bundle_for("s0")  # wave 1 open: both get counter 2
    served = bundles.bundle_for("s0")
    assert served is not None
    assert served[0] == current
    assert store.bundle("g", 1) == PREVIOUS  # what a halted rollout falls back to, kept


def test_a_bundle_file_that_does_not_verify_is_not_imported(tmp_path: Path) -> None:
    forged = bundle(2, ec.generate_private_key(ec.SECP256R1()))  # signed by a key the hub does not trust
    store = open_store("sqlite://")
    assert import_data_dir(store, old_data_dir(tmp_path, current=forged), check) == []
    assert store.rollouts() == []


def test_no_policy_directory_imports_nothing(tmp_path: Path) -> None:
    assert import_data_dir(open_store("sqlite://"), tmp_path / "policy", check) == []
