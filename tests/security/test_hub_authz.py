"""Who may call which route of a real trustd, over mTLS: every route of the app's own table against every kind
of caller, revoked ones included (issue 12, finding 2).

The table of expectations is written here, by hand, from the security promises; the routes come from the
running app. A route the table does not know fails the test, and a route without a rule stops the app from
being built at all (`authz.check_routes`), so a new route cannot be open by omission.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localpeers.nodes import enroll_node
from tests.integration.conftest import BootedDevice
from tests.support.fleet_hub import (
    CLUSTER,
    GROUP,
    OPERATOR,
    OTHER_GROUP_CLUSTER,
    OTHER_GROUP_PUBLISHER,
    PUBLISHER,
    REVOKED_CLUSTER,
    REVOKED_OPERATOR,
    REVOKED_PUBLISHER,
    WORKLOAD,
    FleetHub,
    running_fleet_hub,
)
from trustd.errors import TrustdError
from trustd.server.api import authz

pytestmark = pytest.mark.integration

#: the caller kinds of the matrix; "node" is the enrolled node's own SVID, "revoked node" the same after revocation
ANONYMOUS, NODE, REVOKED_NODE = "anonymous", "node", "revoked node"
IDENTITIES = {
    "operator": OPERATOR,
    "publisher": PUBLISHER,
    "publisher of another group": OTHER_GROUP_PUBLISHER,
    "cluster": CLUSTER,
    "cluster of another group": OTHER_GROUP_CLUSTER,
    "workload": WORKLOAD,
    "revoked operator": REVOKED_OPERATOR,
    "revoked publisher": REVOKED_PUBLISHER,
    "revoked cluster": REVOKED_CLUSTER,
}
EVERYONE_IN_GOOD_STANDING = frozenset(
    {
        ANONYMOUS,
        NODE,
        "operator",
        "publisher",
        "publisher of another group",
        "cluster",
        "cluster of another group",
        "workload",
    }
)
NODES = frozenset({NODE})
OPERATORS = frozenset({"operator"})
CLUSTERS = frozenset({"cluster", "cluster of another group"})

#: (method, path) -> who is let through; everyone else must be refused 403 caller_not_allowed
EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/v1/enroll/challenge"): EVERYONE_IN_GOOD_STANDING,
    ("POST", "/v1/enroll/complete"): EVERYONE_IN_GOOD_STANDING,
    ("GET", "/v1/bundle"): EVERYONE_IN_GOOD_STANDING,
    ("GET", "/v1/bundle.pem"): EVERYONE_IN_GOOD_STANDING,
    ("GET", "/healthz"): EVERYONE_IN_GOOD_STANDING,
    ("POST", "/v1/agent/renew/challenge"): NODES,
    ("POST", "/v1/agent/renew"): NODES,
    ("GET", "/v1/agent/entries"): NODES,
    ("POST", "/v1/agent/svids"): NODES,  # the bare-ASGI fast path
    ("POST", "/v1/agent/jwt"): NODES,
    ("GET", "/v1/fleet/nodes"): OPERATORS,
    ("POST", "/v1/fleet/entries"): OPERATORS,
    ("GET", "/v1/fleet/entries"): OPERATORS,
    ("DELETE", "/v1/fleet/entries/{entry_id}"): OPERATORS,
    ("POST", "/v1/fleet/clusters/{cluster}/identity"): OPERATORS,
    # a cluster's node attestation document: to that cluster alone ({cluster} is "cluster"'s own name)
    ("GET", "/v1/fleet/clusters/{cluster}/nodes"): frozenset({"cluster"}),
    ("GET", "/v1/fleet/revocations"): OPERATORS,
    ("POST", "/v1/fleet/revocations"): OPERATORS,
    ("GET", "/v1/policy/bundle"): CLUSTERS,
    ("POST", "/v1/policy/bundle"): CLUSTERS,
    ("GET", "/v1/policy/revocations"): CLUSTERS,
    ("POST", "/v1/policy/status"): CLUSTERS,
    ("POST", "/v1/policy/admission"): CLUSTERS,
    ("POST", "/v1/policy/bundles/{group}"): frozenset({"publisher"}),
    # a rollout's progress: operators, and the publishers and clusters of that group only
    ("GET", "/v1/policy/rollouts/{group}"): frozenset({"operator", "publisher", "cluster"}),
}
PATH_VALUES = {"{group}": GROUP, "{entry_id}": "0" * 32, "{cluster}": CLUSTER.rsplit("/", 1)[-1]}


@pytest.fixture
def fleet_hub(tmp_path: Path, ek_roots: Path) -> Iterator[FleetHub]:
    with running_fleet_hub(tmp_path, ek_roots=ek_roots) as hub:
        yield hub


def _call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    for name, value in PATH_VALUES.items():
        path = path.replace(name, value)
    if method in ("POST", "PUT", "PATCH"):
        # an empty object: enough to pass the rule and be refused by the route itself, never enough to change state
        return client.request(method, path, json={})
    return client.request(method, path)


def _verdict(answer: httpx.Response) -> str:
    assert answer.status_code < 500, f"{answer.status_code} {answer.text[:300]}"
    if answer.status_code == 403 and answer.json().get("error") == authz.CallerRefusedError.code:
        return "refused"
    return "allowed"


def _served_routes(hub: FleetHub) -> set[tuple[str, str]]:
    return {(r.method, r.path) for r in authz.route_rules(hub.running.hub.app)}


def test_revoked_operator_publisher_and_cluster_are_refused_on_every_route_of_the_app(
    fleet_hub: FleetHub, golden_device: BootedDevice, tmp_path: Path
) -> None:
    routes = _served_routes(fleet_hub)
    assert routes == set(EXPECTED), (
        f"routes without an expectation here: {sorted(routes - set(EXPECTED))}; "
        f"expected routes the app does not serve: {sorted(set(EXPECTED) - routes)}"
    )
    node = enroll_node(
        fleet_hub.running.url,
        fleet_hub.running.ca_bundle,
        tcti=golden_device.tcti,
        event_log=golden_device.event_log,
        out_dir=tmp_path / "node",
    )
    node_svid = (tmp_path / "node" / "svid.pem", tmp_path / "node" / "svid.key")
    store = fleet_hub.running.hub.store
    revocations_before = [r.spiffe_id for r in store.revocations()]

    clients = {ANONYMOUS: fleet_hub.client(), NODE: fleet_hub.client(svid=node_svid)}
    clients |= {kind: fleet_hub.client(spiffe_id) for kind, spiffe_id in IDENTITIES.items()}
    wrong: list[str] = []
    try:
        for (method, path), allowed in sorted(EXPECTED.items()):
            for kind, client in clients.items():
                verdict = _verdict(_call(client, method, path))
                if verdict != ("allowed" if kind in allowed else "refused"):
                    wrong.append(f"{method} {path} as {kind}: {verdict}")
        fleet_hub.revoke(node.spiffe_id)
        for method, path in sorted(EXPECTED):
            if _verdict(_call(clients[NODE], method, path)) != "refused":
                wrong.append(f"{method} {path} as {REVOKED_NODE}: allowed")
    finally:
        for client in clients.values():
            client.close()
    assert wrong == []
    # nothing the refused callers sent changed anything: no entry, no new revocation, nothing published
    assert store.entries() == []
    assert [r.spiffe_id for r in store.revocations()] == [*revocations_before, node.spiffe_id]
    assert fleet_hub.running.hub.policy is not None
    assert fleet_hub.running.hub.policy.rollout(GROUP) is None


def test_route_added_without_an_authorization_rule_stops_the_app(fleet_hub: FleetHub) -> None:
    app = fleet_hub.running.hub.app
    authz.check_routes(app)  # the app as built passes
    app.add_api_route("/v1/debug/everything", lambda: {"open": True}, methods=["GET"])
    try:
        with pytest.raises(TrustdError, match=r"GET /v1/debug/everything"):
            authz.check_routes(app)
    finally:
        app.router.routes.pop()
