"""Input attacks on a real trustd (issue 12, findings 3, 7 and 8): registration entries naming privileged
identities, a naming template that renders them, query parameters and bundle counters the hub could not
handle, and a store outage that must read as "unavailable", never as a refusal or a 500."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edgetrust.bundles.format import MAX_COUNTER
from localpeers.hub import golden_reference_values, init_trust_files
from localpeers.nodes import enroll_node
from localpeers.postgres import PostgresServer, running_postgres
from localpeers.tlsca import TestCA
from tests.integration.conftest import BootedDevice
from tests.support.fleet_hub import (
    CLUSTER,
    DOMAIN,
    GROUP,
    OPERATOR,
    PUBLISHER,
    FleetHub,
    running_fleet_hub,
)
from trustd.cli.trustctl import main as trustctl
from trustd.server.store import EntryRecord

pytestmark = pytest.mark.integration

#: a privileged identity configured outside the reserved namespaces: reserved all the same
CONFIGURED_OPERATOR = f"spiffe://{DOMAIN}/ops/alice"


@pytest.fixture
def fleet_hub(tmp_path: Path, ek_roots: Path) -> Iterator[FleetHub]:
    with running_fleet_hub(tmp_path, ek_roots=ek_roots, operators=(CONFIGURED_OPERATOR,)) as hub:
        yield hub


def test_entry_naming_operator_publisher_cluster_hub_or_node_ids_is_refused_and_never_minted(
    fleet_hub: FleetHub, golden_device: BootedDevice, tmp_path: Path
) -> None:
    node = enroll_node(
        fleet_hub.running.url,
        fleet_hub.running.ca_bundle,
        tcti=golden_device.tcti,
        event_log=golden_device.event_log,
        out_dir=tmp_path / "node",
    )
    privileged = [
        OPERATOR,  # .../operator/admin
        f"spiffe://{DOMAIN}/operator/new-admin",
        PUBLISHER,
        f"spiffe://{DOMAIN}/publisher/ci",
        CLUSTER,
        f"spiffe://{DOMAIN}/cluster/not-yet-in-the-fleet",
        f"spiffe://{DOMAIN}/trustd",
        f"spiffe://{DOMAIN}/trustd/replica-2",
        CONFIGURED_OPERATOR,
        f"{CONFIGURED_OPERATOR}/laptop",
        node.spiffe_id,  # the node itself
        f"{node.spiffe_id}/app",  # under a node
        f"spiffe://{DOMAIN}/site/lab/node/gw-02",  # another node, enrolled or not yet
        f"spiffe://{DOMAIN}",  # the trust domain itself
    ]
    store = fleet_hub.running.hub.store
    with fleet_hub.client(OPERATOR) as operator:
        for name in privileged:
            body = {"spiffe_id": name, "parent_id": node.spiffe_id, "selectors": ["unix:uid:0"]}
            answer = operator.post("/v1/fleet/entries", json=body)
            assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text)
            assert answer.json()["error"] == "reserved_spiffe_id", (name, answer.text)
            assert "reserved" in answer.json()["reason"] or "node" in answer.json()["reason"]
        assert store.entries() == []
        ordinary = {
            "spiffe_id": f"spiffe://{DOMAIN}/workload/web",
            "parent_id": node.spiffe_id,
            "selectors": ["unix:uid:0"],
        }
        assert operator.post("/v1/fleet/entries", json=ordinary).status_code == 200
    # An entry stored before the rule (or written into the database by hand) is still never served or minted
    store.put_entry(
        EntryRecord(
            id="f" * 32,
            spiffe_id=OPERATOR,
            parent_id=node.spiffe_id,
            selectors=("unix:uid:0",),
            ttl_s=3600,
            created_at=0.0,
        )
    )
    with fleet_hub.client(svid=(tmp_path / "node" / "svid.pem", tmp_path / "node" / "svid.key")) as agent:
        served = agent.get("/v1/agent/entries").json()["entries"]
        assert [e["spiffe_id"] for e in served] == [f"spiffe://{DOMAIN}/workload/web"]
        minted = agent.post("/v1/agent/svids", json={"requests": [{"entry_id": "f" * 32, "csr": "x"}]})
        assert minted.status_code == 403
        assert "is not assigned to" in minted.json()["reason"]
        token = agent.post("/v1/agent/jwt", json={"entry_id": "f" * 32, "audience": ["spiffe://edge.example/api"]})
        assert token.status_code == 403
    assert store.svids(OPERATOR) == []


@pytest.mark.parametrize("template", ["/{node}", "/{site}/node/{node}", "/operator/{node}", "/cluster/{site}-{node}"])
def test_naming_template_that_renders_reserved_names_refuses_to_start(
    template: str, tmp_path: Path, ek_roots: Path
) -> None:
    refvalues = tmp_path / "reference-values.yaml"
    refvalues.write_text(yaml.safe_dump(golden_reference_values()))
    argv = [str(Path(sys.executable).parent / "trustd"), "serve", "--data-dir", str(tmp_path / "hub")]
    argv += ["--ek-roots", str(ek_roots), "--reference-values", str(refvalues), "--port", "0"]
    init_trust_files(tmp_path / "hub")  # `trustd ca init`: what is refused here is the template
    env = {**os.environ, "TRUSTD_SPIFFE_ID_TEMPLATE": template}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "reserved namespace" in done.stderr
    assert not (tmp_path / "hub" / "tls" / "client-roots.pem").exists()  # it stopped before serving anything


@pytest.mark.parametrize("wait", ["nan", "NaN", "inf", "-inf", "1e309", "-1", "61", "abc", ""])
def test_long_poll_with_wait_nan_inf_or_out_of_range_is_bad_input_not_a_server_error(
    fleet_hub: FleetHub, wait: str
) -> None:
    with fleet_hub.client(CLUSTER) as cluster:
        for method in ("GET", "POST"):
            answer = cluster.request(method, f"/v1/policy/bundle?wait={wait}", json={"reports": []})
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"] == "invalid_request"
            assert "wait" in answer.json()["reason"]
        assert cluster.get("/v1/policy/bundle?wait=0").status_code == 204  # the cluster still polls fine


def test_bundle_counter_of_ten_to_the_260_is_refused_and_the_group_still_takes_the_next_bundle(
    fleet_hub: FleetHub,
) -> None:
    policy = fleet_hub.running.hub.policy
    assert policy is not None
    store = fleet_hub.running.hub.store
    with fleet_hub.client(PUBLISHER) as publisher:
        for counter in (10**260, 10**247, MAX_COUNTER + 1):
            answer = publisher.post(f"/v1/policy/bundles/{GROUP}", content=fleet_hub.signed_bundle(counter))
            assert 400 <= answer.status_code < 500, answer.text
            assert "counter" in answer.json()["reason"]
            assert policy.rollout(GROUP) is None
            assert store.rollout_versions() == {}  # nothing of it stored
        # the group is not frozen: the largest legal counter is accepted, and the store of bundles is sane
        accepted = publisher.post(f"/v1/policy/bundles/{GROUP}", content=fleet_hub.signed_bundle(7))
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["counter"] == 7
        top = publisher.post(f"/v1/policy/bundles/{GROUP}", content=fleet_hub.signed_bundle(MAX_COUNTER))
        assert top.status_code == 200, top.text
    assert store.bundle(GROUP, 7) is not None
    assert store.bundle(GROUP, MAX_COUNTER) is not None
    (record,) = store.rollouts()
    assert record.counter == MAX_COUNTER


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


def test_postgres_stopped_mid_run_answers_503_with_retry_after_and_records_nothing(
    tmp_path: Path, ek_roots: Path, postgres: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_fleet_hub(tmp_path, ek_roots=ek_roots, store_url=postgres.new_database()) as hub:
        store = hub.running.hub.store
        entry = {"spiffe_id": f"spiffe://{DOMAIN}/workload/web", "parent_id": f"spiffe://{DOMAIN}/site/lab/node/gw-01"}
        with hub.client(OPERATOR) as operator, hub.client(CLUSTER) as cluster:
            first = operator.post("/v1/fleet/entries", json={**entry, "selectors": ["unix:uid:1"]})
            assert first.status_code == 200, first.text
            postgres.stop("fast")  # mid-run: the database is gone
            try:
                for answer in (
                    operator.post("/v1/fleet/entries", json={**entry, "selectors": ["unix:uid:2"]}),
                    operator.post("/v1/fleet/revocations", json={"target": CLUSTER, "reason": "outage"}),
                    cluster.get("/v1/policy/bundle"),
                ):
                    assert answer.status_code == 503, answer.text
                    assert int(answer.headers["retry-after"]) > 0
                    assert answer.json()["error"] == "store_error"
                # trustctl reads it as "unavailable, retry" (exit 3), not as a refusal (exit 1)
                cert, key = hub.svid(OPERATOR)
                hub_args = ["--hub", hub.running.url, "--ca-bundle", str(hub.running.ca_bundle)]
                assert trustctl(["fleet", "list", *hub_args, "--svid", str(cert), "--svid-key", str(key)]) == 3
                assert "unavailable" in capsys.readouterr().err
            finally:
                postgres.start()
            # nothing the outage interrupted was recorded, and the hub serves again once the database is back
            assert [e.selectors for e in store.entries()] == [("unix:uid:1",)]
            assert CLUSTER not in {r.spiffe_id for r in store.revocations()}
            assert cluster.get("/v1/policy/bundle").status_code == 204
