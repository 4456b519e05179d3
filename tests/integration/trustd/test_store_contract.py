"""The store's contract, on both backends: the embedded SQLite file and a real PostgreSQL (TLS, password
authentication). Where PostgreSQL serves several trustd replicas, "two replicas" are two store objects on one
database, each with its own connection: every guarantee must then come from the database, and is tested so."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localpeers.postgres import PostgresServer, running_postgres
from localpeers.tlsca import TestCA
from trustd.errors import ChallengeError, StoreConflictError, StoreError
from trustd.server.store import (
    AuditEvent,
    ChallengeRecord,
    DeviceRecord,
    RevocationRecord,
    Store,
    SvidRecord,
    open_store,
)
from trustd.server.store.base import ClusterStatusRecord

pytestmark = pytest.mark.integration

Opener = Callable[[], Store]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'trustd.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(open_store(url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


def challenge(cid: str, *, expires_at: float = 160.0) -> ChallengeRecord:
    return ChallengeRecord(cid, "ek1", b"\x00ak", b"n" * 32, b"d" * 32, {"node": "gw"}, 100.0, expires_at)


def enrollment(ek: str, spiffe_id: str, serial: str) -> tuple[DeviceRecord, SvidRecord, AuditEvent]:
    return (
        DeviceRecord(ek, spiffe_id, "edge-gateway", {"site": "lab"}, "000b" + "00" * 32, 100.0),
        SvidRecord(serial, spiffe_id, ek, 100.0, 200.0),
        AuditEvent(100.0, "enroll.complete", "enrolled", spiffe_id),
    )


def test_a_challenge_answers_once_and_says_why_not(opener: Opener) -> None:
    store = opener()
    store.put_challenge(challenge("c1"))
    assert store.consume_challenge("c1", now=120.0).claims == {"node": "gw"}
    with pytest.raises(ChallengeError, match="already answered once"):
        store.consume_challenge("c1", now=121.0)
    with pytest.raises(ChallengeError, match="unknown challenge"):
        store.consume_challenge("nope", now=121.0)
    store.put_challenge(challenge("c2", expires_at=110.0))
    with pytest.raises(ChallengeError, match="expired 10s ago"):
        store.consume_challenge("c2", now=120.0)
    assert store.purge_challenges(now=200.0) == 2


def test_pending_challenges_are_capped_per_ek_and_purpose_and_expired_ones_purged(opener: Opener) -> None:
    a, b = opener(), opener()
    for i in range(10):  # round 1 replayed ten times for one EK, on two replicas
        (a, b)[i % 2].put_challenge(
            ChallengeRecord(f"e{i}", "ek1", b"ak", b"n", b"d", {}, 100.0 + i, 160.0 + i), keep_per_ek=4
        )
    renewal = ChallengeRecord("r1", "ek1", b"", b"n", b"", {"purpose": "renew"}, 100.0, 160.0, purpose="renew")
    a.put_challenge(renewal, keep_per_ek=4)
    a.put_challenge(ChallengeRecord("other", "ek2", b"ak", b"n", b"d", {}, 105.0, 165.0), keep_per_ek=4)
    # the newest four of ek1's enrollments survive; its renewal and the other EK's challenge are untouched
    assert b.consume_challenge("e9", now=120.0).id == "e9"
    assert a.consume_challenge("e6", now=120.0).id == "e6"
    with pytest.raises(ChallengeError, match="unknown challenge"):
        a.consume_challenge("e5", now=120.0)
    assert b.consume_challenge("r1", now=120.0).purpose == "renew"
    # expired challenges are purged, answered or not, on every replica's view
    assert a.purge_challenges(now=168.5) == 5  # e6..e8, r1, other (e9 expires at 169)
    with pytest.raises(ChallengeError, match="unknown challenge"):
        b.consume_challenge("other", now=120.0)
    assert b.purge_challenges(now=170.0) == 1


def test_refusals_aggregate_into_one_counted_audit_row(opener: Opener) -> None:
    a, b = opener(), opener()
    row = a.audit(AuditEvent(100.0, "enroll.challenge", "refused", "unknown-ek", {"code": "bad_ak"}))
    b.add_to_audit_count(row, 9_999)
    (event,) = b.audit_events()
    assert (event.count, event.detail, event.subject) == (10_000, {"code": "bad_ak"}, "unknown-ek")


def test_two_replicas_racing_for_one_challenge_get_one_success(opener: Opener) -> None:
    replicas = [opener(), opener()]
    replicas[0].put_challenge(challenge("race"))
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def answer(index: int) -> None:
        barrier.wait()
        try:
            replicas[index % 2].consume_challenge("race", now=120.0)
            outcomes.append("ok")
        except ChallengeError:
            outcomes.append("refused")

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7


def test_two_replicas_cannot_give_one_name_to_two_tpms(opener: Opener) -> None:
    a, b = opener(), opener()
    results: list[str] = []
    barrier = threading.Barrier(2)

    def enroll(store: Store, ek: str, serial: str) -> None:
        barrier.wait()
        try:
            store.record_enrollment(*enrollment(ek, "spiffe://edge.example/site/lab/node/gw-07", serial))
            results.append(ek)
        except StoreConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=enroll, args=(s, ek, sn)) for s, ek, sn in ((a, "ekA", "1a"), (b, "ekB", "1b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results)[0] == "conflict"
    assert sorted(results)[1] in ("ekA", "ekB")
    holder = a.device_by_spiffe_id("spiffe://edge.example/site/lab/node/gw-07")
    assert holder is not None
    assert [s.serial for s in b.svids(holder.spiffe_id)] == ["1a" if holder.ek_fingerprint == "ekA" else "1b"]


def test_revocations_count_once_per_subject_and_bar_the_device(opener: Opener) -> None:
    a, b = opener(), opener()
    a.record_enrollment(*enrollment("ek1", "spiffe://edge.example/n/1", "11"))
    event = AuditEvent(101.0, "fleet.revoke", "revoked", "spiffe://edge.example/n/1")
    first = a.revoke(RevocationRecord("spiffe://edge.example/n/1", "ek1", "stolen", "op", 101.0), event)
    again = b.revoke(RevocationRecord("spiffe://edge.example/n/1", "ek1", "again", "op", 102.0), event)
    other = b.revoke(RevocationRecord("spiffe://edge.example/w/2", "", "", "op", 103.0), event)
    assert again == first
    assert other.sequence > first.sequence
    assert a.revocation_counter() == b.revocation_counter() == other.sequence
    assert [r.spiffe_id for r in a.revocations()] == ["spiffe://edge.example/n/1", "spiffe://edge.example/w/2"]
    device = b.device("ek1")
    assert device is not None
    assert device.status == "revoked"
    assert [e.event for e in a.audit_events()].count("fleet.revoke") == 2  # not for the repeat


def test_cluster_status_is_one_row_per_member_replaced_and_kept_across_a_reopen(opener: Opener) -> None:
    store = opener()
    store.put_cluster_status(ClusterStatusRecord("edge-1", "syncer", {"revision": "r1", "result": "applied"}, 10.0))
    store.put_cluster_status(ClusterStatusRecord("edge-1", "pod:w-1", {"counter": 1}, 11.0))
    store.put_cluster_status(ClusterStatusRecord("edge-1", "pod:w-1", {"counter": 2}, 12.0))
    store.put_cluster_status(ClusterStatusRecord("edge-2", "pod:w-1", {"counter": 7}, 13.0))
    store.delete_cluster_status("edge-2", "pod:w-1")
    store.close()
    again = opener()
    assert list(again.cluster_statuses()) == [
        ClusterStatusRecord("edge-1", "pod:w-1", {"counter": 2}, 12.0),
        ClusterStatusRecord("edge-1", "syncer", {"revision": "r1", "result": "applied"}, 10.0),
    ]
    # what another replica wrote lately, by time received (the bound included)
    assert list(again.cluster_statuses_since(12.0)) == [ClusterStatusRecord("edge-1", "pod:w-1", {"counter": 2}, 12.0)]
    assert list(again.cluster_statuses_since(12.5)) == []


def test_reopening_keeps_state_and_schema(opener: Opener) -> None:
    store = opener()
    store.record_enrollment(*enrollment("ek1", "spiffe://edge.example/n/1", "11"))
    version = store.schema_version  # type: ignore[attr-defined]
    store.close()
    again = opener()
    assert again.schema_version == version == 7  # type: ignore[attr-defined]
    assert [d.spiffe_id for d in again.devices()] == ["spiffe://edge.example/n/1"]


def test_a_postgresql_restart_mid_run_loses_and_duplicates_nothing(postgres: PostgresServer) -> None:
    store = open_store(postgres.new_database())
    try:
        store.record_enrollment(*enrollment("ek1", "spiffe://edge.example/n/1", "11"))
        postgres.restart()  # every connection is cut
        store.record_enrollment(*enrollment("ek2", "spiffe://edge.example/n/2", "22"))
        assert [d.spiffe_id for d in store.devices()] == ["spiffe://edge.example/n/1", "spiffe://edge.example/n/2"]
        assert [s.serial for s in store.svids("spiffe://edge.example/n/1")] == ["11"]
        with pytest.raises(StoreConflictError):  # the same SVID recorded twice is refused, never duplicated
            store.record_enrollment(*enrollment("ek2", "spiffe://edge.example/n/2", "22"))
        assert [s.serial for s in store.svids("spiffe://edge.example/n/2")] == ["22"]
    finally:
        store.close()


def test_an_unreachable_or_refusing_database_is_a_clear_error(postgres: PostgresServer) -> None:
    wrong = postgres.url().replace(postgres.password, "wrong-password")
    with pytest.raises(StoreError, match="cannot reach the PostgreSQL store") as caught:
        open_store(wrong)
    assert postgres.password not in str(caught.value)
    assert "wrong-password" not in str(caught.value)


def test_a_verified_renewal_moves_the_last_attestation_forward_only(opener: Opener) -> None:
    store = opener()
    device, svid, event = enrollment("ek1", "spiffe://edge.example/n/1", "11")
    store.record_enrollment(dataclasses.replace(device, attested_at=100.0), svid, event)
    renew = AuditEvent(150.0, "agent.renew", "renewed", device.spiffe_id)
    store.record_svid(SvidRecord("12", device.spiffe_id, "ek1", 150.0, 250.0), renew, attested_at=150.0)
    assert store.device("ek1").attested_at == 150.0  # type: ignore[union-attr]
    # a replica's renewal committed late (its clock behind) never sets the time back
    store.record_svid(SvidRecord("13", device.spiffe_id, "ek1", 140.0, 240.0), renew, attested_at=140.0)
    assert store.device("ek1").attested_at == 150.0  # type: ignore[union-attr]
    # an SVID recorded without a verified quote (an operator's offline mint) does not count as an attestation
    store.record_svid(SvidRecord("14", device.spiffe_id, "ek1", 190.0, 290.0), renew)
    again = opener()
    assert again.device_by_spiffe_id(device.spiffe_id).attested_at == 150.0  # type: ignore[union-attr]


def test_a_bundle_and_its_rollout_are_stored_together_and_only_a_newer_one_follows(opener: Opener) -> None:
    store, other = opener(), opener()  # two replicas
    assert store.publish_bundle("g", 2, b"two", {"counter": 2, "opened": 0}, now=10.0) == 1
    with pytest.raises(StoreConflictError, match="bundle counter 2 is not newer than 2"):
        other.publish_bundle("g", 2, b"again", {"counter": 2}, now=11.0)
    with pytest.raises(StoreConflictError, match="bundle counter 1 is not newer than 2"):
        other.publish_bundle("g", 1, b"older", {"counter": 1}, now=11.0)
    assert other.publish_bundle("g", 3, b"three", {"counter": 3, "opened": 0}, now=12.0) == 2
    (record,) = store.rollouts()
    assert (record.group, record.counter, record.state, record.version) == ("g", 3, {"counter": 3, "opened": 0}, 2)
    assert store.rollout_versions() == {"g": 2}
    assert (store.bundle("g", 2), store.bundle("g", 3), store.bundle("g", 1)) == (b"two", b"three", None)
    assert store.rollouts() == opener().rollouts()  # a replica started later reads the same
    store.put_bundle("g", 0, b"imported", now=13.0)  # a bundle without a rollout (an import's fallback)
    store.put_bundle("g", 2, b"not this", now=13.0)  # one kept already stays as it is
    assert (store.bundle("g", 0), store.bundle("g", 2), store.rollout_versions()) == (b"imported", b"two", {"g": 2})


def test_two_replicas_updating_one_rollout_lose_neither_update(opener: Opener) -> None:
    first = opener()
    first.publish_bundle("g", 1, b"one", {"applied": []}, now=1.0)
    replicas = [opener() for _ in range(4)]
    start = threading.Barrier(len(replicas))

    def add(store: Store, name: str) -> None:
        start.wait()
        for index in range(10):

            def append(state: dict[str, object], item: str = f"{name}-{index}") -> dict[str, object]:
                applied = state["applied"]
                assert isinstance(applied, list)
                return {"applied": [*applied, item]}

            store.update_rollout("g", 1, append)

    threads = [threading.Thread(target=add, args=(store, f"r{n}")) for n, store in enumerate(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (record,) = first.rollouts()
    assert sorted(record.state["applied"]) == sorted(f"r{n}-{i}" for n in range(4) for i in range(10))  # type: ignore[call-overload]
    assert record.version == 1 + 40


def test_an_update_for_a_rollout_published_over_writes_nothing(opener: Opener) -> None:
    store = opener()
    store.publish_bundle("g", 1, b"one", {"n": 1}, now=1.0)
    store.publish_bundle("g", 2, b"two", {"n": 2}, now=2.0)
    assert store.update_rollout("g", 1, lambda state: {"n": "overwritten"}) is None
    assert store.update_rollout("h", 1, lambda state: {"n": "made up"}) is None
    (record,) = store.rollouts()
    assert (record.state, record.version) == ({"n": 2}, 2)


def test_postgresql_notifies_other_replicas_of_a_rollout_and_a_revocation(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    writer, reader = open_store(url), open_store(url)
    heard = {"edgetrust_policy": threading.Event(), "edgetrust_revocations": threading.Event()}
    listening = threading.Event()
    try:
        stops = [reader.subscribe(channel, event.set) for channel, event in heard.items()]
        # LISTEN is asynchronous to us: write until the first notification arrives (never a timed sleep)
        counter = 0
        while not heard["edgetrust_policy"].is_set():
            counter += 1
            writer.publish_bundle("g", counter, b"blob", {"n": counter}, now=1.0)
            listening.wait(0.1)
        heard["edgetrust_policy"].clear()
        assert writer.update_rollout("g", counter, lambda state: {"n": "moved"}) is not None
        assert heard["edgetrust_policy"].wait(10), "no notification of a rollout update"
        assert not heard["edgetrust_revocations"].is_set()
        writer.revoke(
            RevocationRecord("spiffe://edge.example/n/1", "", "gone", "op", 1.0),
            AuditEvent(1.0, "revoke", "revoked", "spiffe://edge.example/n/1"),
        )
        assert heard["edgetrust_revocations"].wait(10), "no notification of a revocation"
        for stop in stops:
            stop()
    finally:
        writer.close()
        reader.close()


def test_sqlite_subscriptions_are_a_no_op_for_its_single_replica(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'trustd.db'}")
    try:
        heard = threading.Event()
        stop = store.subscribe("edgetrust_policy", heard.set)
        store.publish_bundle("g", 1, b"blob", {}, now=1.0)
        stop()
        assert not heard.is_set()  # the replica's own change wakes it in process (PolicyBundles._notify)
    finally:
        store.close()
