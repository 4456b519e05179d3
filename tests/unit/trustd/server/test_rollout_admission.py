"""A rollout counts a cluster applied only when both planes are: its NetworkPolicies (the syncer's report) and,
when its syncer hands bundles to the webhook, every live admission replica; a replica whose OPA refused the
bundle fails the cluster with its reason; a silent replica drops out; all of it survives a hub restart (store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.webhook import LOOPBACK_SITE
from trustd.errors import StoreError
from trustd.server.policy.clusterstatus import (
    MAX_REPLICAS,
    REPLICA_TTL_S,
    ClusterStatus,
    ReplicaLimitError,
    ReplicaReport,
)
from trustd.server.policy.distribution import Fleet, PolicyBundles, Rollout
from trustd.server.store.base import ClusterStatusRecord
from trustd.server.store.sqlite import SQLiteStore

REPO_POLICIES = Path(__file__).resolve().parents[4] / "policies"
HANDED = {"result": "applied", "admission": "handed-over"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    group = {"matchLabels": {"k": "v"}, "canary": ["c0"], "waves": [100], "publishers": ["spiffe://t/ci"]}
    clusters = {name: {"labels": {"k": "v"}} for name in ("c0", "c1")}
    path.write_text(yaml.safe_dump({"groups": {"g": group}, "clusters": clusters}))
    return path


def hub(tmp_path: Path, clock: Clock, store: SQLiteStore) -> PolicyBundles:
    return PolicyBundles(store, Fleet.load(fleet_file(tmp_path)), KEYS, clusters=ClusterStatus(store, clock=clock))


_KEY = ec.generate_private_key(ec.SECP256R1())
KEYS = {"k": _KEY.public_key()}


def publish(bundles: PolicyBundles, counter: int) -> Rollout:
    files = build_files(
        read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=counter, commit="c", group="g"
    )
    return bundles.publish("g", pack(sign_files(files, SigningKey("k", _KEY))), publisher="spiffe://t/ci")


def replica(pod: str, counter: int, revision: str = "r", **more: str) -> ReplicaReport:
    return ReplicaReport(pod=pod, revision=revision, counter=counter, **more)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "trustd.db")


def test_a_cluster_with_a_handoff_waits_for_every_live_replica(tmp_path: Path, store: SQLiteStore) -> None:
    clock = Clock()
    bundles = hub(tmp_path, clock, store)
    rollout = publish(bundles, 1)
    bundles.report("c0", {"revision": rollout.revision, **HANDED})
    assert "c0" not in rollout.applied  # NetworkPolicies alone are not enough
    assert rollout.opened == 0
    view = bundles.rollout_view("g")
    assert view is not None
    assert view["clusters"]["c0"]["admission"] == {
        "handoff": True, "state": "pending", "replicas": {}, "reason": "no webhook replica has reported"
    }  # fmt: skip
    bundles.report_replica("c0", replica("w-b", 0))
    bundles.report_replica("c0", replica("w-a", 1, rollout.revision))
    assert "c0" not in rollout.applied  # w-b still enforces the previous counter
    view = bundles.rollout_view("g")
    assert view is not None
    assert view["clusters"]["c0"]["admission"]["replicas"] == {
        "w-a": {"revision": rollout.revision, "counter": 1, "state": "applied"},
        "w-b": {"revision": "r", "counter": 0, "state": "pending"},
    }
    assert view["clusters"]["c0"]["networkpolicies"] == {"revision": rollout.revision, "result": "applied"}
    bundles.report_replica("c0", replica("w-b", 1, rollout.revision))
    assert rollout.applied == {"c0": "applied"}
    assert rollout.opened == 1  # the canary wave is done: the next opens


def test_a_silent_replica_drops_out_and_no_longer_holds_the_wave(tmp_path: Path, store: SQLiteStore) -> None:
    clock = Clock()
    bundles = hub(tmp_path, clock, store)
    rollout = publish(bundles, 1)
    bundles.report_replica("c0", replica("w-gone", 0))
    bundles.report("c0", {"revision": rollout.revision, **HANDED})
    clock.now += REPLICA_TTL_S + 1
    bundles.report_replica("c0", replica("w-a", 1, rollout.revision))
    assert rollout.applied == {"c0": "applied"}
    view = bundles.rollout_view("g")
    assert view is not None
    assert set(view["clusters"]["c0"]["admission"]["replicas"]) == {"w-a"}


def test_a_replica_whose_opa_refused_fails_the_cluster_with_its_reason(tmp_path: Path, store: SQLiteStore) -> None:
    clock = Clock()
    bundles = hub(tmp_path, clock, store)
    rollout = publish(bundles, 1)
    bundles.report("c0", {"revision": rollout.revision, **HANDED})
    bundles.report_replica(
        "c0", replica("w-a", 0, last_failure="OPA refused: rego_type_error", last_failed_revision=rollout.revision)
    )
    assert rollout.failed == {"c0": "webhook replica w-a: OPA refused: rego_type_error"}
    assert rollout.halted  # maxFailures 0
    view = bundles.rollout_view("g")
    assert view is not None
    assert view["clusters"]["c0"]["admission"]["replicas"]["w-a"]["state"] == "failed"
    assert view["waves"][0]["failed"] == {"c0": "webhook replica w-a: OPA refused: rego_type_error"}


def test_a_cluster_without_a_handoff_needs_only_its_networkpolicies(tmp_path: Path, store: SQLiteStore) -> None:
    bundles = hub(tmp_path, Clock(), store)
    rollout = publish(bundles, 1)
    bundles.report("c0", {"revision": rollout.revision, "result": "applied", "admission": ""})
    assert rollout.applied == {"c0": "applied"}


def test_the_handoff_is_remembered_across_unchanged_reports(tmp_path: Path, store: SQLiteStore) -> None:
    """The syncer says "handed-over" once; its later UNCHANGED reports carry no handoff but the cluster has one."""
    bundles = hub(tmp_path, Clock(), store)
    publish(bundles, 1)
    bundles.report("c0", {"revision": "old", **HANDED})
    rollout = publish(bundles, 2)
    bundles.report("c0", {"revision": rollout.revision, "result": "unchanged", "admission": ""})
    assert "c0" not in rollout.applied


def test_a_hub_restart_keeps_every_members_status(tmp_path: Path, store: SQLiteStore) -> None:
    clock = Clock()
    bundles = hub(tmp_path, clock, store)
    rollout = publish(bundles, 1)
    bundles.report("c0", {"revision": rollout.revision, **HANDED})
    bundles.report_replica("c0", replica("w-a", 0))
    bundles.clusters.flush()
    bundles.flush()  # what the hub writes each SYNC_S, and at shutdown
    store.close()
    again = hub(tmp_path, clock, SQLiteStore(tmp_path / "trustd.db"))
    view = again.rollout_view("g")
    assert view is not None
    assert view["clusters"]["c0"]["admission"]["replicas"] == {
        "w-a": {"revision": "r", "counter": 0, "state": "pending"}
    }
    assert view["clusters"]["c0"]["admission"]["handoff"] is True
    assert view["clusters"]["c0"]["networkpolicies"] == {"revision": rollout.revision, "result": "applied"}
    # the restarted hub goes on from there: the last replica's report completes the cluster
    restored = again.rollout("g")
    assert restored is not None
    again.report_replica("c0", replica("w-a", 1, rollout.revision))
    assert restored.applied == {"c0": "applied"}


def test_more_live_replicas_than_the_limit_are_refused_never_dropped(tmp_path: Path, store: SQLiteStore) -> None:
    status = ClusterStatus(store, clock=Clock())
    for index in range(MAX_REPLICAS):
        status.replica_report("c0", replica(f"w-{index}", 1))
    with pytest.raises(ReplicaLimitError, match="64 live admission replicas"):
        status.replica_report("c0", replica("w-extra", 1))
    status.replica_report("c0", replica("w-0", 2))  # a known one still reports
    assert len(status.replicas("c0")) == MAX_REPLICAS
    assert "w-extra" not in status.replicas("c0")


def test_trustctl_shows_each_clusters_networkpolicies_and_each_replicas_admission_revision(
    tmp_path: Path, store: SQLiteStore
) -> None:
    from trustd.cli.policy_release import render

    bundles = hub(tmp_path, Clock(), store)
    rollout = publish(bundles, 1)
    bundles.report("c0", {"revision": rollout.revision, **HANDED})
    bundles.report_replica("c0", replica("w-b", 0, "old"))
    bundles.report_replica("c0", replica("w-a", 1, rollout.revision))
    view = bundles.rollout_view("g")
    assert view is not None
    lines = render(view).splitlines()
    assert (
        f"    c0: networkpolicies {rollout.revision} applied; admission pending: "
        f"w-a {rollout.revision} (1) applied, w-b old (0) pending"
    ) in lines
    assert "  wave 0 [" + "." * 30 + "] 0/1 applied (open)" in lines


def test_a_store_outage_keeps_unwritten_status_for_the_next_flush(tmp_path: Path, store: SQLiteStore) -> None:
    class Failing(SQLiteStore):
        down = True

        def put_cluster_status(self, record: ClusterStatusRecord) -> None:
            if self.down:
                raise StoreError("the store is down")
            super().put_cluster_status(record)

    flaky = Failing(tmp_path / "flaky.db")
    status = ClusterStatus(flaky, clock=Clock())
    status.replica_report("c0", replica("w-a", 1))
    with pytest.raises(StoreError):
        status.flush()
    assert list(flaky.cluster_statuses()) == []
    flaky.down = False
    status.replica_report("c0", replica("w-b", 2))
    status.flush()
    assert [(r.member, r.report["counter"]) for r in flaky.cluster_statuses()] == [("pod:w-a", 1), ("pod:w-b", 2)]


def test_a_store_outage_keeps_rollout_progress_for_the_next_flush_in_order(tmp_path: Path) -> None:
    class Failing(SQLiteStore):
        down = False

        def update_rollout(self, *args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreError("the store is down")
            return super().update_rollout(*args, **kwargs)

    flaky = Failing(tmp_path / "flaky.db")
    bundles = hub(tmp_path, Clock(), flaky)
    rollout = publish(bundles, 1)
    flaky.down = True
    bundles.report("c0", {"revision": rollout.revision, "result": "failed", "error": "apply refused"})
    with pytest.raises(StoreError):  # the halt is decided here, and its write fails
        bundles.flush()
    assert rollout.halted  # this replica acts on it at once
    (stored,) = flaky.rollouts()
    assert stored.state["halted"] is False
    flaky.down = False
    bundles.report("c1", {"revision": rollout.revision, "result": "failed", "error": "late"})
    bundles.flush()
    (stored,) = flaky.rollouts()
    assert stored.state["halted"] is True
    assert stored.state["failed"] == {"c0": "apply refused", "c1": "late"}  # the kept ops, then the new one
    again = hub(tmp_path, Clock(), SQLiteStore(tmp_path / "flaky.db"))  # a restart reads what was written
    assert again.rollout("g").halted  # type: ignore[union-attr]
