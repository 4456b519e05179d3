"""The hub's revocation list: resolution of what an operator names, one counter step per subject, a signed
bundle every replica rebuilds from the store, and the edge's refusal of anything tampered, foreign or older."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.errors import BundleFormatError, BundleSignatureError, RollbackError
from edgetrust.bundles.format import pack, unpack
from edgetrust.bundles.revocations import KEY_ID, RevocationList, RevocationStore, RevokedError
from edgetrust.bundles.signing import SigningKey, sign_files
from edgetrust.spiffe.id import TrustDomain
from trustd.errors import StoreError
from trustd.server.revocations import RevocationError, Revocations, load_or_create_key
from trustd.server.store import AuditEvent, DeviceRecord, SvidRecord
from trustd.server.store.sqlite import SQLiteStore

DOMAIN = TrustDomain.parse("edge.example")
NODE = "spiffe://edge.example/site/lab/node/gw-01"
EK = "ab" * 32


def enrolled_store(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    store.record_enrollment(
        DeviceRecord(EK, NODE, "edge-gateway", {"site": "lab", "node": "gw-01"}, "000b", 1.0),
        SvidRecord("1f", NODE, EK, 1.0, 2.0),
        AuditEvent(1.0, "enroll.complete", "enrolled", NODE),
    )
    return store


@pytest.fixture
def hub(tmp_path: Path) -> Revocations:
    return Revocations(enrolled_store(tmp_path / "db"), load_or_create_key(tmp_path / "keys"), DOMAIN)


def keys(hub: Revocations) -> dict[str, ec.EllipticCurvePublicKey]:
    return {KEY_ID: hub._key.private_key.public_key()}


def test_a_node_named_by_its_node_claim_is_revoked_with_its_tpm(hub: Revocations, tmp_path: Path) -> None:
    record = hub.revoke("gw-01", reason="stolen", by="spiffe://edge.example/operator/admin")
    assert (record.spiffe_id, record.ek_fingerprint, record.sequence) == (NODE, EK, 1)
    store = hub._store
    assert store.device(EK) is not None
    assert store.device(EK).status == "revoked"  # type: ignore[union-attr]
    assert hub.is_revoked(NODE)
    assert store.audit_events()[0].event == "fleet.revoke"


def test_revoking_twice_moves_the_counter_once(hub: Revocations) -> None:
    hub.revoke(NODE, reason="", by="op")
    hub.revoke(EK[:16], reason="again", by="op")
    hub.revoke("spiffe://edge.example/workload/x", reason="", by="op")
    assert [r.sequence for r in hub.records()] == [1, 2]
    assert hub.current().counter == 2


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("gw-99", "no enrolled device is named 'gw-99'"),
        ("spiffe://other.example/node", "not in trust domain edge.example"),
        ("spiffe://edge.example/../x", "is not a SPIFFE ID"),
        ("abab", "no enrolled device"),  # a fingerprint prefix under 16 digits names nothing
    ],
)
def test_what_cannot_be_revoked_says_why(hub: Revocations, target: str, message: str) -> None:
    with pytest.raises(RevocationError, match=message.replace(".", r"\.").replace("(", r"\(")):
        hub.revoke(target, reason="", by="op")
    assert hub.records() == []


def test_a_second_replica_serves_the_same_list(hub: Revocations, tmp_path: Path) -> None:
    other = Revocations(SQLiteStore(tmp_path / "db"), load_or_create_key(tmp_path / "keys"), DOMAIN)
    hub.revoke(NODE, reason="", by="op")
    other._checked = 0.0
    assert other.current().etag == hub.current().etag  # an agent moving between replicas fetches nothing twice
    assert other.current().counter == 1
    assert other.is_revoked(NODE)


def test_the_edge_accepts_the_signed_list_and_keeps_it(hub: Revocations, tmp_path: Path) -> None:
    hub.revoke(NODE, reason="", by="op")
    out = tmp_path / "out" / "revocations.json"
    edge = RevocationStore(tmp_path / "edge", keys(hub), out)
    found = edge.accept(hub.current().blob, hub.current().etag)
    assert found.spiffe_ids == {NODE}
    assert found.nodes == {EK}
    assert json.loads(out.read_text())["spiffe_ids"] == [NODE]
    with pytest.raises(RevokedError, match="is revoked"):
        RevocationList.load_json(out).check(NODE)
    restarted = RevocationStore(tmp_path / "edge", keys(hub))
    assert restarted.current == found
    assert restarted.etag == hub.current().etag


def test_the_edge_refuses_an_older_list(hub: Revocations, tmp_path: Path) -> None:
    empty = hub.current().blob
    hub.revoke(NODE, reason="", by="op")
    edge = RevocationStore(tmp_path / "edge", keys(hub))
    edge.accept(hub.current().blob, None)
    with pytest.raises(RollbackError, match="older than the one held"):
        edge.accept(empty, None)
    assert edge.current.spiffe_ids == {NODE}


def test_the_edge_refuses_tampered_foreign_and_misplaced_lists(hub: Revocations, tmp_path: Path) -> None:
    hub.revoke(NODE, reason="", by="op")
    edge = RevocationStore(tmp_path / "edge", keys(hub))
    files = dict(unpack(hub.current().blob).files)
    tampered = dict(files, **{"edgetrust/revocations/data.json": b'{"spiffe_ids": [], "nodes": []}'})
    with pytest.raises(BundleSignatureError, match="does not match its signed hash"):
        edge.accept(pack(tampered), None)
    forger = SigningKey(KEY_ID, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(BundleSignatureError, match="does not verify"):
        edge.accept(pack(sign_files({k: v for k, v in tampered.items() if k != ".signatures.json"}, forger)), None)
    # a list signed with the right key but claiming the policy bundle's roots could shadow policy data in OPA
    manifest = json.loads(files[".manifest"])
    manifest["roots"] = ["edgetrust"]
    misplaced = {k: v for k, v in files.items() if k != ".signatures.json"}
    misplaced[".manifest"] = json.dumps(manifest).encode()
    with pytest.raises(BundleFormatError, match="must have roots"):
        edge.accept(pack(sign_files(misplaced, hub._key)), None)
    with pytest.raises(BundleFormatError):
        edge.accept(hub.current().blob[:100], None)
    assert edge.current.counter == -1  # nothing was taken


def test_the_signing_key_is_private_on_disk(tmp_path: Path) -> None:
    load_or_create_key(tmp_path / "keys")
    assert (tmp_path / "keys" / "signing.key").stat().st_mode & 0o777 == 0o600


class _AwayStore(SQLiteStore):
    """A store that can be made unreachable (as PostgreSQL stopped would be), for the watched list."""

    away = False

    def revocation_counter(self) -> int:
        if self.away:
            raise StoreError("the store is away")
        return super().revocation_counter()


def test_a_watched_list_fails_closed_while_the_store_is_away_and_serves_again_on_the_next_look(
    tmp_path: Path,
) -> None:
    store = _AwayStore(tmp_path / "db")
    watched = Revocations(store, load_or_create_key(tmp_path / "keys"), DOMAIN)

    async def scenario() -> None:
        watcher = asyncio.create_task(watched.watch())
        await asyncio.sleep(0)  # the watcher runs: requests read what it found
        try:
            assert not watched.is_revoked(NODE)
            store.away = True
            await watched.refresh()
            assert watched.failing
            with pytest.raises(StoreError, match="cannot be confirmed current"):  # 503, never a stale "no"
                watched.is_revoked(NODE)
            # meanwhile another replica on the same database revokes the node
            other = Revocations(enrolled_store(tmp_path / "db"), load_or_create_key(tmp_path / "keys"), DOMAIN)
            other.revoke(NODE, reason="stolen", by="op")
            store.away = False
            await watched.refresh()
            assert not watched.failing
            assert watched.is_revoked(NODE)
        finally:
            watcher.cancel()

    asyncio.run(scenario())
