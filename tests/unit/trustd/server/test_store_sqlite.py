from __future__ import annotations

import threading
from pathlib import Path

import pytest

from trustd.errors import ChallengeError, StoreConflictError, StoreError
from trustd.server.store import AuditEvent, ChallengeRecord, DeviceRecord, SvidRecord, open_store
from trustd.server.store.schema import MIGRATIONS
from trustd.server.store.sqlite import SQLiteStore


def _challenge(cid: str = "c1", *, expires_at: float = 160.0) -> ChallengeRecord:
    return ChallengeRecord(
        id=cid,
        ek_fingerprint="ek1",
        ak_public=b"\x00\x23ak",
        nonce=b"n" * 32,
        secret_digest=b"d" * 32,
        claims={"site": "lab", "node": "gw-01", "device_class": "edge-gateway"},
        created_at=100.0,
        expires_at=expires_at,
    )


def _enrollment(ek: str, spiffe_id: str, serial: str) -> tuple[DeviceRecord, SvidRecord, AuditEvent]:
    return (
        DeviceRecord(
            ek_fingerprint=ek,
            spiffe_id=spiffe_id,
            device_class="edge-gateway",
            claims={"site": "lab"},
            ak_name="000b" + "00" * 32,
            enrolled_at=100.0,
        ),
        SvidRecord(serial=serial, spiffe_id=spiffe_id, ek_fingerprint=ek, not_before=100.0, not_after=200.0),
        AuditEvent(at=100.0, event="enroll.complete", outcome="enrolled", subject=spiffe_id),
    )


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "trustd.db")


def test_challenge_answers_exactly_once(store: SQLiteStore) -> None:
    store.put_challenge(_challenge())
    got = store.consume_challenge("c1", now=120.0)
    assert got.nonce == b"n" * 32
    assert got.claims["device_class"] == "edge-gateway"
    with pytest.raises(ChallengeError, match="already answered"):
        store.consume_challenge("c1", now=121.0)


def test_expired_and_unknown_challenges(store: SQLiteStore) -> None:
    store.put_challenge(_challenge(expires_at=110.0))
    with pytest.raises(ChallengeError, match="expired"):
        store.consume_challenge("c1", now=120.0)
    with pytest.raises(ChallengeError, match="already answered"):  # even a late answer burns it
        store.consume_challenge("c1", now=105.0)
    with pytest.raises(ChallengeError, match="unknown"):
        store.consume_challenge("nope", now=105.0)
    assert store.purge_challenges(now=1000.0) == 1


def test_concurrent_consumers_get_one_success(store: SQLiteStore) -> None:
    store.put_challenge(_challenge())
    wins: list[str] = []
    errors: list[Exception] = []

    def take() -> None:
        try:
            store.consume_challenge("c1", now=120.0)
            wins.append("ok")
        except ChallengeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert len(errors) == 7


def test_enrollment_is_recorded_atomically_and_names_are_bound_to_one_ek(store: SQLiteStore) -> None:
    store.record_enrollment(*_enrollment("ek1", "spiffe://td/site/lab/node/a", "01"))
    assert store.device("ek1") is not None
    assert store.device_by_spiffe_id("spiffe://td/site/lab/node/a") == store.device("ek1")
    with pytest.raises(StoreConflictError, match="already held by another TPM"):
        store.record_enrollment(*_enrollment("ek2", "spiffe://td/site/lab/node/a", "02"))
    # nothing of the refused enrollment stayed behind: no SVID, no audit event
    assert [s.serial for s in store.svids("spiffe://td/site/lab/node/a")] == ["01"]
    assert [e.outcome for e in store.audit_events()] == ["enrolled"]
    # a duplicate serial is a conflict too, and rolls back
    with pytest.raises(StoreConflictError):
        store.record_enrollment(*_enrollment("ek3", "spiffe://td/site/lab/node/b", "01"))
    assert store.device("ek3") is None


def test_reopening_keeps_state_and_schema_version(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "db")
    first.record_enrollment(*_enrollment("ek1", "spiffe://td/x", "01"))
    first.close()
    again = open_store(f"sqlite:///{tmp_path / 'db'}")
    assert isinstance(again, SQLiteStore)
    assert again.schema_version == len(MIGRATIONS)
    assert [d.spiffe_id for d in again.devices()] == ["spiffe://td/x"]


def test_unknown_store_url_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="unsupported store URL 'mysql'"):
        open_store("mysql://x")


def test_store_urls_relative_absolute_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///rel.db").close()
    assert (tmp_path / "rel.db").exists()
    open_store(f"sqlite:///{tmp_path / 'abs.db'}").close()
    assert (tmp_path / "abs.db").exists()
    memory = open_store("sqlite://")
    assert memory.devices() == []
