"""Attacks on node aliases and cluster identities, against a real trustd with two swtpm devices enrolled, one
at site `lab` and one at site `other`.

A cluster's identity (`spiffe://edge.example/cluster/edge-1`) is parented to `lab`'s node alias: the node of
`other` asks for the entries and mints by entry ID, with its real node SVID over mTLS, and gets nothing. An
operator's mistakes and a hand-written store row cannot widen it either: the generic entry route refuses the
reserved names (cluster IDs, aliases), an entry naming a cluster under a node's own ID or with selectors other
than k8s:ns + k8s:sa is never served, and `cluster add` refuses non-operators, clusters outside the fleet file,
a site contradicting it, and a second site for the same cluster.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.spiffe.id import ReservedNames, SpiffeId, TrustDomain
from localpeers.hub import RunningHub, running_hub
from localpeers.nodes import enroll_node
from localpeers.svid import issue_svid_files
from tests.integration.conftest import BootedDevice, _booted
from trustd.agent.identities import AgentError, HubClient
from trustd.cli.trustctl import main as trustctl
from trustd.errors import ReservedSpiffeIdError
from trustd.server.store import EntryRecord

pytestmark = pytest.mark.integration

OPERATOR = "spiffe://edge.example/operator/admin"
CLUSTER_ID = "spiffe://edge.example/cluster/edge-1"
LAB_ALIAS = "spiffe://edge.example/alias/site/lab"
FLEET = {
    "groups": {
        "gateways": {
            "matchLabels": {"site-class": "edge-gateway"},
            "waves": [100],
            "publishers": ["spiffe://edge.example/operator/ci"],
        }
    },
    "clusters": {
        "edge-1": {"labels": {"site-class": "edge-gateway", "site": "lab"}},
        "edge-2": {"labels": {"site-class": "edge-gateway"}},
    },
}


@pytest.fixture
def second_device(tpm_factory: object) -> Iterator[BootedDevice]:
    yield from _booted(tpm_factory)  # type: ignore[arg-type]


@pytest.fixture
def hub(tmp_path: Path, ek_roots: Path) -> Iterator[RunningHub]:
    keys = tmp_path / "publisher-keys"
    keys.mkdir()
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    (keys / "ci-1.pem").write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(FLEET))
    with running_hub(
        tmp_path / "hub",
        ek_roots=ek_roots,
        operators=(OPERATOR,),
        fleet_file=fleet_file,
        policy_keys_dir=keys,
        trust_domain="edge.example",
    ) as running:
        yield running


def hub_args(hub: RunningHub, spiffe_id: str, directory: Path) -> list[str]:
    cert, key = issue_svid_files(hub.hub.ca, spiffe_id, directory)
    return ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key)]


def as_node(hub: RunningHub, svid_dir: Path) -> tuple[list[str], list[str]]:
    """What this node's agent is handed (entry SPIFFE IDs), and which of the cluster entries it could mint."""

    async def ask() -> tuple[list[str], list[str]]:
        client = HubClient(hub.url, svid_dir)
        try:
            answer = await client.call("GET", "/v1/agent/entries")
            minted, refusals = [], []
            for entry in hub.hub.store.entries(parent_id=LAB_ALIAS):
                try:
                    await client.call("POST", "/v1/agent/svids", {"requests": [{"entry_id": entry.id, "csr": CSR}]})
                    minted.append(entry.id)
                except AgentError as exc:
                    refusals.append(exc.diagnostics())
            assert all("is not assigned to" in r for r in refusals), refusals  # refused as not its own
            return sorted(e["spiffe_id"] for e in answer["entries"]), minted
        finally:
            await client.close()

    return asyncio.run(ask())


def _csr() -> str:
    from trustd.agent.identities import _csr as make

    return make(ec.generate_private_key(ec.SECP256R1()))


CSR = _csr()


def test_a_site_alias_serves_the_nodes_of_its_site_only(
    hub: RunningHub, golden_device: BootedDevice, second_device: BootedDevice, tmp_path: Path
) -> None:
    lab = enroll_node(
        hub.url,
        hub.ca_bundle,
        tcti=golden_device.tcti,
        event_log=golden_device.event_log,
        out_dir=tmp_path / "lab",
        node="n1",
        site="lab",
    )
    other = enroll_node(
        hub.url,
        hub.ca_bundle,
        tcti=second_device.tcti,
        event_log=second_device.event_log,
        out_dir=tmp_path / "other",
        node="n1",
        site="other",
    )
    assert lab.spiffe_id != other.spiffe_id
    operator = hub_args(hub, OPERATOR, tmp_path / "operator")
    assert trustctl(["fleet", "cluster", "add", "edge-1", "--site", "lab", *operator]) == 0

    # hand-written rows an operator's route would refuse: a cluster ID under a node's own name, and one under
    # the alias selected by a unix uid (any process of any lab node); neither may be served
    for parent, selectors in ((lab.spiffe_id, ("k8s:ns:x", "k8s:sa:y")), (LAB_ALIAS, ("unix:uid:0",))):
        hub.hub.store.put_entry(
            EntryRecord(uuid.uuid4().hex, CLUSTER_ID, parent, tuple(sorted(selectors)), 3600, time.time())
        )

    lab_entries, lab_minted = as_node(hub, tmp_path / "lab")
    assert lab_entries == [CLUSTER_ID, CLUSTER_ID]  # the syncer's and the webhook's entries; not the 2 rows
    assert len(lab_minted) == 2  # the two entries from `cluster add`; the unix-selected row is not mintable
    other_entries, other_minted = as_node(hub, tmp_path / "other")
    assert other_entries == []
    assert other_minted == []


def test_the_generic_entry_route_refuses_cluster_ids_and_aliases(hub: RunningHub, tmp_path: Path) -> None:
    operator = hub_args(hub, OPERATOR, tmp_path / "operator")
    for spiffe_id in (CLUSTER_ID, LAB_ALIAS, "spiffe://edge.example/alias/site/lab/x"):
        argv = ["fleet", "entry", "create", "--spiffe-id", spiffe_id, "--parent", LAB_ALIAS]
        assert trustctl([*argv, "--selector", "k8s:ns:edgetrust-system", "--selector", "k8s:sa:s", *operator]) != 0
    assert hub.hub.store.entries() == []


def test_cluster_add_refuses_what_it_must(hub: RunningHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    operator = hub_args(hub, OPERATOR, tmp_path / "operator")
    cases = [
        (["edge-1", "--site", "lab", *hub_args(hub, CLUSTER_ID, tmp_path / "cluster")], "not an operator"),
        (["edge-1", "--site", "lab", *hub_args(hub, LAB_ALIAS, tmp_path / "alias")], "not an operator"),
        (["not-in-fleet", "--site", "lab", *operator], "not in the fleet file"),
        (["edge-1", "--site", "other", *operator], "at site 'lab' in the fleet file"),
        (["edge-1", "--site", "lab", "--namespace", "Bad_NS", *operator], "not a Kubernetes namespace"),
        (["edge-1", "--site", "lab", "--service-account", "a/b", *operator], "not a Kubernetes service account"),
        (["edge-1", "--site", "l/b", *operator], "cluster_identity_refused"),
    ]
    for argv, expected in cases:
        assert trustctl(["fleet", "cluster", "add", *argv]) != 0, argv
        assert expected in capsys.readouterr().err, argv
    assert hub.hub.store.entries() == []
    # a cluster lives at one site: edge-2 (no site label) added at lab, then at other, is refused the second time
    assert trustctl(["fleet", "cluster", "add", "edge-2", "--site", "lab", *operator]) == 0
    assert trustctl(["fleet", "cluster", "add", "edge-2", "--site", "other", *operator]) != 0
    assert "already served under spiffe://edge.example/alias/site/lab" in capsys.readouterr().err
    assert {e.parent_id for e in hub.hub.store.entries()} == {LAB_ALIAS}
    audited = [e for e in hub.hub.store.audit_events() if e.event == "fleet.cluster"]
    assert [e.subject for e in audited] == ["spiffe://edge.example/cluster/edge-2"]


def test_no_node_may_be_named_under_the_alias_namespace() -> None:
    names = ReservedNames(TrustDomain("edge.example"), node_template="/site/{site}/node/{node}")
    with pytest.raises(ReservedSpiffeIdError, match="reserved namespace /alias"):
        ReservedNames(TrustDomain("edge.example"), node_template="/alias/{node}").check_template()
    assert names.reason(SpiffeId.parse(LAB_ALIAS)) is not None
