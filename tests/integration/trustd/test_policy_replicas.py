"""Policy distribution on hub replicas: three `trustd` hubs (each a real server over mTLS) on one real PostgreSQL.

A bundle published at one replica is served by the others; a long poll held at one replica wakes when a bundle
is published, or a cluster revoked, at another (PostgreSQL LISTEN/NOTIFY: the poll returns on the change, long
before its wait is over); a rollout's waves advance from reports that reach different replicas; and a replica
started again with a fresh data directory (only the keys every replica shares) serves what it served before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from localpeers.postgres import PostgresServer, running_postgres
from localpeers.tlsca import TestCA
from tests.support.fleet_hub import (
    DOMAIN,
    OPERATOR,
    PUBLISHER,
    REVOKED_OPERATOR,
    REVOKED_PUBLISHER,
    FleetHub,
    running_fleet_hub,
)
from tests.support.waiting import until
from trustd.server.api.policy import REVOCATIONS_HEADER

pytestmark = pytest.mark.integration

GROUP = "g"
#: the canary c1, then c2 and c3 (50 % of the rest), then c4; every wave must apply everywhere to open the next
FLEET: dict[str, object] = {
    "groups": {
        GROUP: {
            "matchLabels": {"tier": "edge"},
            "canary": ["c1"],
            "waves": [50, 100],
            "advanceAt": 100,
            "publishers": [PUBLISHER, REVOKED_PUBLISHER],
        }
    },
    "clusters": {
        **{f"c{n}": {"labels": {"tier": "edge"}} for n in range(1, 5)},
        "site-r": {"labels": {"tier": "retired"}},
    },
    "operators": [OPERATOR, REVOKED_OPERATOR],
}
#: a long poll's wait: a poll that returns before it ended was woken by the change
WAIT_S = 30.0


def cluster(name: str) -> str:
    return f"spiffe://{DOMAIN}/cluster/{name}"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


@pytest.fixture
def replicas(tmp_path: Path, ek_roots: Path, postgres: PostgresServer) -> Iterator[list[FleetHub]]:
    url = postgres.new_database()
    with ExitStack() as stack:
        first = stack.enter_context(running_fleet_hub(tmp_path / "a", ek_roots=ek_roots, fleet=FLEET, store_url=url))
        hubs = [first]
        for name in ("b", "c"):
            hubs.append(
                stack.enter_context(
                    running_fleet_hub(tmp_path / name, ek_roots=ek_roots, fleet=FLEET, replica_of=first, store_url=url)
                )
            )
        yield hubs


def publish(hub: FleetHub, counter: int) -> dict[str, Any]:
    with hub.client(PUBLISHER) as publisher:
        answer = publisher.post(f"/v1/policy/bundles/{GROUP}", content=hub.signed_bundle(counter, GROUP))
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def applied(hub: FleetHub, name: str, revision: str) -> None:
    report = {"cluster": name, "revision": revision, "result": "applied", "admission": ""}
    with hub.client(cluster(name)) as client:
        answer = client.post("/v1/policy/status", json=[report])
    assert answer.status_code == 200, answer.text


def poll(hub: FleetHub, name: str, **headers: str) -> httpx.Response:
    with hub.client(cluster(name)) as client:
        return client.get("/v1/policy/bundle", headers=headers)


class HeldPoll:
    """A long poll held at `hub` on a thread; `answer` once it returned, and how long it was held."""

    def __init__(self, hub: FleetHub, name: str, headers: dict[str, str]) -> None:
        self.answer: httpx.Response | None = None
        self.returned_at = 0.0
        hub.svid(cluster(name))  # issued here, not on the thread while the test issues others
        self._thread = threading.Thread(target=self._run, args=(hub, name, headers))
        self._thread.start()
        until(lambda: hub.running.hub.policy.long_polls_waiting(GROUP), "the long poll to be held")  # type: ignore[union-attr]

    def _run(self, hub: FleetHub, name: str, headers: dict[str, str]) -> None:
        with hub.client(cluster(name)) as client:
            self.answer = client.get("/v1/policy/bundle", params={"wait": WAIT_S}, headers=headers)
        self.returned_at = time.monotonic()

    def result(self) -> tuple[httpx.Response, float]:
        self._thread.join()
        assert self.answer is not None
        return self.answer, self.returned_at


def test_a_bundle_published_at_one_replica_wakes_a_long_poll_held_at_another(replicas: list[FleetHub]) -> None:
    a, b, c = replicas
    assert poll(b, "c1").status_code == 204  # nothing published yet
    held = HeldPoll(b, "c1", {})
    published_at = time.monotonic()
    view = publish(a, 1)
    answer, returned_at = held.result()
    assert answer.status_code == 200, answer.text
    assert answer.content == a.signed_bundle(1, GROUP) or answer.headers["etag"]
    held_s = returned_at - published_at
    assert held_s < WAIT_S - 1, f"the poll at b returned only when its wait ended ({held_s:.1f} s after the publish)"
    # the third replica serves the same bytes under the same ETag: any replica answers any cluster
    served = poll(c, "c1")
    assert served.status_code == 200
    assert (served.content, served.headers["etag"]) == (answer.content, answer.headers["etag"])
    assert view["revision"] == c.running.hub.policy.rollout(GROUP).revision  # type: ignore[union-attr]


def test_a_revocation_at_one_replica_wakes_a_long_poll_held_at_another(replicas: list[FleetHub]) -> None:
    a, b, _c = replicas
    publish(a, 1)
    until(lambda: poll(b, "c1").status_code == 200, "replica b to serve the bundle published at a")
    current = poll(b, "c1")
    before = current.headers[REVOCATIONS_HEADER]
    held = HeldPoll(b, "c1", {"If-None-Match": current.headers["etag"], REVOCATIONS_HEADER: before})
    revoked_at = time.monotonic()
    a.revoke(cluster("c4"))
    answer, returned_at = held.result()
    assert answer.status_code == 304, answer.text  # the bundle did not change: the revocation list did
    assert answer.headers[REVOCATIONS_HEADER] != before
    held_s = returned_at - revoked_at
    assert held_s < WAIT_S - 1, f"the poll at b returned only when its wait ended ({held_s:.1f} s after the revocation)"
    assert b.running.hub.revocations.is_revoked(cluster("c4"))


def test_waves_advance_from_reports_reaching_different_replicas(replicas: list[FleetHub]) -> None:
    a, b, c = replicas
    revision = publish(a, 1)["revision"]
    policies = [hub.running.hub.policy for hub in replicas]
    until(lambda: all(p.rollout(GROUP) is not None for p in policies), "every replica to know the rollout")  # type: ignore[union-attr]
    assert poll(c, "c2").status_code == 204  # not in the canary wave
    applied(b, "c1", revision)  # the canary's report reaches b
    until(lambda: poll(c, "c2").status_code == 200, "wave 1 to open at replica c")
    assert poll(a, "c4").status_code == 204
    applied(a, "c2", revision)
    assert poll(b, "c4").status_code == 204  # half of wave 1 is not enough (advanceAt 100)
    applied(c, "c3", revision)  # the wave's other half reaches another replica
    until(lambda: poll(a, "c4").status_code == 200, "wave 2 to open at replica a")
    applied(b, "c4", revision)

    def views() -> list[dict[str, Any]]:
        return [p.rollout_view(GROUP) or {} for p in policies]  # type: ignore[union-attr]

    until(lambda: all(v["complete"] for v in views()), "every replica to see the rollout complete")
    seen = views()
    assert all(v["waves"] == seen[0]["waves"] for v in seen)
    assert [w["applied"] for w in seen[0]["waves"]] == [["c1"], ["c2", "c3"], ["c4"]]


def test_a_replica_started_with_a_fresh_data_dir_loses_nothing(
    tmp_path: Path, ek_roots: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    with running_fleet_hub(tmp_path / "a", ek_roots=ek_roots, fleet=FLEET, store_url=url) as a:
        with running_fleet_hub(tmp_path / "b", ek_roots=ek_roots, fleet=FLEET, replica_of=a, store_url=url) as b:
            revision = publish(b, 1)["revision"]
            applied(b, "c1", revision)
            served = poll(b, "c2")
            assert served.status_code == 200
            before = b.running.hub.policy.rollout_view(GROUP)  # type: ignore[union-attr]
            assert not (tmp_path / "b" / "hub" / "hub" / "policy").exists()  # nothing of it in the data dir
        # b stopped (its last progress flushed at shutdown); again, with a data dir that holds only the shared keys
        with running_fleet_hub(tmp_path / "b2", ek_roots=ek_roots, fleet=FLEET, replica_of=a, store_url=url) as again:
            after = again.running.hub.policy.rollout_view(GROUP)  # type: ignore[union-attr]
            assert after is not None
            assert before is not None
            assert after["waves"] == before["waves"]
            assert after["clusters"]["c1"]["networkpolicies"] == before["clusters"]["c1"]["networkpolicies"]
            again_served = poll(again, "c2")
            assert (again_served.content, again_served.headers["etag"]) == (served.content, served.headers["etag"])
            with again.client(PUBLISHER) as publisher:  # and it still refuses what is not newer
                stale = publisher.post(f"/v1/policy/bundles/{GROUP}", content=again.signed_bundle(1, GROUP))
            assert stale.status_code == 409, stale.text


def webhook_replica(hub: FleetHub, name: str, pod: str, counter: int, revision: str) -> None:
    report = {"cluster": name, "pod": pod, "revision": revision, "counter": counter}
    with hub.client(cluster(name)) as client:
        answer = client.post("/v1/policy/admission", json=report)
    assert answer.status_code == 200, answer.text


def test_a_cluster_whose_syncer_and_webhook_report_to_different_replicas_counts_once_both_applied(
    replicas: list[FleetHub],
) -> None:
    a, b, c = replicas
    revision = publish(a, 1)["revision"]
    policies = [hub.running.hub.policy for hub in replicas]
    until(lambda: all(p.rollout(GROUP) is not None for p in policies), "every replica to know the rollout")  # type: ignore[union-attr]
    handed = {"cluster": "c1", "revision": revision, "result": "applied", "admission": "handed-over"}
    with a.client(cluster("c1")) as client:  # the syncer's report reaches a
        assert client.post("/v1/policy/status", json=[handed]).status_code == 200
    b_policy = policies[1]
    assert b_policy is not None
    until(
        lambda: (b_policy.clusters.syncer("c1") or {}).get("handoff") is True,
        "replica b to learn that c1's syncer hands its bundles to the webhook",
    )
    webhook_replica(b, "c1", "webhook-0", 0, "older")  # its webhook still enforces the previous counter
    a_policy = policies[0]
    assert a_policy is not None
    until(lambda: "webhook-0" in a_policy.clusters.replicas("c1"), "replica a to learn of c1's webhook replica")
    for policy in policies:
        rollout = policy.rollout(GROUP)  # type: ignore[union-attr]
        assert rollout is not None
        assert "c1" not in rollout.applied, "a cluster counted applied before its webhook enforces the rollout"
    assert poll(c, "c2").status_code == 204  # the canary wave is not done
    webhook_replica(b, "c1", "webhook-0", 1, revision)  # now it does, reported to b again
    until(lambda: poll(c, "c2").status_code == 200, "wave 1 to open once c1's webhook enforces the rollout")
    assert a_policy.rollout(GROUP).applied == {"c1": "applied"}  # type: ignore[union-attr]
