"""Attestation-aware binding end to end, with the light peers: a real trustd (a swtpm node enrolled with
node=gw-01, site=lab; the cluster's site from `fleet cluster add`), the syncer's relay fetching the signed node
attestation document over mTLS as the cluster and writing it to the ConfigMap, and a real kube-apiserver
calling the served webhook for pods and pods/binding. A Binding to the attested node is made; one to a node
the hub never attested, or to the node once revoked at the hub, is refused with the reason.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgetrust._internal import hubclient
from edgetrust._internal import kube as kubeapi
from edgetrust.bundles.revocations import KEY_ID, RevocationStore
from edgetrust.bundles.signing import load_verification_keys
from localpeers.nodes import enroll_node
from syncer.nodestatus import NodeStatusRelay
from syncer.sources import MAX_ANSWER_BYTES, hub_node_status, hub_session
from tests.integration.conftest import BootedDevice
from tests.support.binding_rig import NAMESPACE, BindingRig, binding_rig
from tests.support.fleet_hub import CLUSTER, OPERATOR, FleetHub, running_fleet_hub

pytestmark = pytest.mark.integration

CLUSTER_NAME = CLUSTER.rsplit("/", 1)[-1]


def relay_once(hub: FleetHub, rig: BindingRig, state: Path) -> int:
    """One round of what the syncer does after a sync: take the hub's revocation list, relay the document."""
    keys = load_verification_keys({KEY_ID: hub.running.hub.revocations.public_key_pem})

    async def main() -> int:
        cert, key = hub.svid(CLUSTER)
        context = hubclient.tls_context(hub.running.ca_bundle, cert, key)
        async with hub_session(hub.running.url, context) as http:
            store = RevocationStore(state, keys)
            listed = await hubclient.fetch(http, "GET", "/v1/policy/revocations", timeout_s=10, limit=MAX_ANSWER_BYTES)
            assert listed.status == 200
            store.accept(listed.body, listed.headers.get("etag"))
            relay = NodeStatusRelay(
                hub_node_status(f"/v1/fleet/clusters/{CLUSTER_NAME}/nodes", http),
                kubeapi.Direct(rig.kube.url, rig.kube.token, rig.kube.ca_file),
                cluster=CLUSTER_NAME,
                namespace=NAMESPACE,
                keys=keys,
                revocations=store,
            )
            try:
                assert await relay.run_once(force=True), relay.last_error
            finally:
                await relay.aclose()
            return relay.sequence

    state.mkdir(parents=True, exist_ok=True)
    return asyncio.run(main())


def test_pods_are_bound_to_attested_nodes_only(tmp_path: Path, ek_roots: Path, golden_device: BootedDevice) -> None:
    with running_fleet_hub(tmp_path / "fleet", ek_roots=ek_roots) as hub:
        with hub.client(OPERATOR) as operator:  # trustctl fleet cluster add site-a --site lab
            added = operator.post(
                f"/v1/fleet/clusters/{CLUSTER_NAME}/identity",
                json={"site": "lab", "namespace": NAMESPACE, "service_accounts": ["edgetrust-syncer"]},
            )
            assert added.status_code == 200, added.text
        node = enroll_node(
            hub.running.url,
            hub.running.ca_bundle,
            tcti=golden_device.tcti,
            event_log=golden_device.event_log,
            out_dir=tmp_path / "node",
            node="gw-01",
            site="lab",
        )
        with binding_rig(tmp_path / "rig", hub.running.hub.revocations.public_key_pem, cluster=CLUSTER_NAME) as rig:
            # no document yet: fail closed, and say so
            rig.pending_pod("early")
            early = rig.bind("early", "gw-01")
            assert early.status_code == 403, early.text
            assert "no node attestation status from the hub yet" in early.json()["message"]

            first = relay_once(hub, rig, tmp_path / "syncer")
            rig.wait_held(sequence=first)
            bound = rig.bind("early", "gw-01")
            assert bound.status_code == 201, bound.text
            assert rig.node_of("early") == "gw-01"

            rig.pending_pod("stray")
            stray = rig.bind("stray", "gw-99")
            assert stray.status_code == 403
            assert "node 'gw-99' was never attested at the hub" in stray.json()["message"]
            assert rig.node_of("stray") == ""

            hub.revoke(node.spiffe_id)
            second = relay_once(hub, rig, tmp_path / "syncer")
            assert second > first
            rig.wait_held(sequence=second)
            rig.pending_pod("late")
            late = rig.bind("late", "gw-01")
            assert late.status_code == 403
            assert f"node 'gw-01' ({node.spiffe_id}) is revoked at the hub" in late.json()["message"]
            assert rig.node_of("late") == ""
            direct = rig.create_on_node("direct", "gw-01")  # spec.nodeName, past the scheduler
            assert direct.status_code == 403
            assert "is revoked at the hub" in direct.json()["message"]
