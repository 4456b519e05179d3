"""The hub's node attestation document: which nodes it lists for a cluster, and what it says of each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgetrust.bundles import nodestatus
from edgetrust.bundles.errors import BundleSignatureError
from edgetrust.bundles.revocations import KEY_ID
from edgetrust.bundles.signing import load_verification_keys
from edgetrust.spiffe.id import TrustDomain
from trustd.server.nodestatus import NodeAttestations, NoNodeStatusError
from trustd.server.policy.distribution import Fleet, PolicyBundles
from trustd.server.revocations import Revocations, load_or_create_key
from trustd.server.store import AuditEvent, DeviceRecord, EntryRecord, Store, SvidRecord, open_store

DOMAIN = TrustDomain.parse("edge.example")
FLEET = {
    "groups": {
        "gateways": {"matchLabels": {"class": "gw"}, "nodeAttestationMaxAge": 600},
        "stores": {"matchLabels": {"class": "store"}},
    },
    "clusters": {
        "edge-1": {"labels": {"class": "gw", "site": "lab"}},
        "edge-2": {"labels": {"class": "store"}},  # its site from its identity entries
        "edge-3": {"labels": {"class": "store"}},  # no site at all
    },
}


def _enroll(store: Store, name: str, site: str, *, at: float, ek: str | None = None) -> str:
    spiffe_id = f"spiffe://edge.example/site/{site}/node/{name}" + (f"-{ek}" if ek else "")
    ek = ek or f"ek-{site}-{name}"
    store.record_enrollment(
        DeviceRecord(ek, spiffe_id, "edge-gateway", {"site": site, "node": name}, "00", at, attested_at=at),
        SvidRecord(f"{ek}-1", spiffe_id, ek, at, at + 100),
        AuditEvent(at, "enroll.complete", "enrolled", spiffe_id),
    )
    return spiffe_id


@pytest.fixture
def hub(tmp_path: Path) -> tuple[Store, Revocations, NodeAttestations]:
    store = open_store("sqlite://")
    revocations = Revocations(store, load_or_create_key(tmp_path / "rev"), DOMAIN)
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(FLEET))
    policy = PolicyBundles(store, Fleet.load(fleet_file), {}, revocations)
    return store, revocations, NodeAttestations(store, revocations, policy, DOMAIN, clock=lambda: 1000.0)


def test_the_document_lists_the_sites_nodes_with_their_last_attestation(
    hub: tuple[Store, Revocations, NodeAttestations],
) -> None:
    store, revocations, nodes = hub
    gw1 = _enroll(store, "gw-01", "lab", at=900.0)
    gw2 = _enroll(store, "gw-02", "lab", at=950.0)
    _enroll(store, "gw-09", "other", at=950.0)  # another site's node: not this cluster's
    store.record_svid(
        SvidRecord("r1", gw1, "ek-lab-gw-01", 990.0, 1090.0), AuditEvent(990, "r", "r", gw1), attested_at=990.0
    )
    revocations.revoke(gw2, reason="stolen", by="test")
    keys = load_verification_keys({KEY_ID: revocations.public_key_pem})
    first = nodestatus.verify(nodes.document("edge-1"), keys, cluster="edge-1")
    assert (first.site, first.max_age_s, first.issued_at) == ("lab", 600, 1000.0)
    assert dict(first.nodes) == {
        "gw-01": nodestatus.NodeRecord(gw1, 990.0, False),
        "gw-02": nodestatus.NodeRecord(gw2, 950.0, True),
    }
    second = nodestatus.verify(nodes.document("edge-1"), keys, cluster="edge-1", held=first.sequence)
    assert second.sequence > first.sequence  # the clock did not move: the sequence still grows
    # the site's node list is reused for a second, but a revocation is in the very next document
    revocations.revoke(gw1, reason="stolen too", by="test")
    third = nodestatus.verify(nodes.document("edge-1"), keys, cluster="edge-1", held=second.sequence)
    assert third.nodes["gw-01"].revoked


def test_a_node_name_claimed_twice_is_bindable_by_neither(hub: tuple[Store, Revocations, NodeAttestations]) -> None:
    store, revocations, nodes = hub
    _enroll(store, "gw-01", "lab", at=900.0)
    _enroll(store, "gw-01", "lab", at=950.0, ek="second")
    found = nodestatus.verify(
        nodes.document("edge-1"), load_verification_keys({KEY_ID: revocations.public_key_pem}), cluster="edge-1"
    )
    assert found.nodes["gw-01"].revoked


def test_the_site_comes_from_the_clusters_identity_entries_else_no_document(
    hub: tuple[Store, Revocations, NodeAttestations],
) -> None:
    store, revocations, nodes = hub
    _enroll(store, "st-01", "shop-9", at=900.0)
    store.put_entry(
        EntryRecord(
            "e1",
            "spiffe://edge.example/cluster/edge-2",
            "spiffe://edge.example/alias/site/shop-9",
            ("k8s:ns:edgetrust-system", "k8s:sa:edgetrust-syncer"),
            3600,
            1.0,
        )
    )
    keys = load_verification_keys({KEY_ID: revocations.public_key_pem})
    found = nodestatus.verify(nodes.document("edge-2"), keys, cluster="edge-2")
    assert (found.site, list(found.nodes), found.max_age_s) == ("shop-9", ["st-01"], nodestatus.DEFAULT_MAX_AGE_S)
    with pytest.raises(NoNodeStatusError, match="has no site"):
        nodes.document("edge-3")
    with pytest.raises(NoNodeStatusError, match="not in the fleet file"):
        nodes.document("nowhere")


def test_only_the_hubs_revocation_key_verifies_it(
    hub: tuple[Store, Revocations, NodeAttestations], tmp_path: Path
) -> None:
    _, _, nodes = hub
    other = load_or_create_key(tmp_path / "other").private_key.public_key()
    with pytest.raises(BundleSignatureError):
        nodestatus.verify(nodes.document("edge-1"), {KEY_ID: other}, cluster="edge-1")
