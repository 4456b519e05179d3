"""The node agent end to end: a swtpm device enrolls with a real trustd; an operator registers entries for it;
`trustctl agent run` serves the Workload API; the official py-spiffe client gets X.509-SVIDs, bundles, JWT-SVIDs
and JWT bundles, has a JWT-SVID validated, and receives a streamed update when its identities change. Refusals:
no security header, a caller whose uid matches no entry, a socket still served by a live agent; a socket left
by a dead agent is taken over. The agent keeps serving while the hub is down, and says how long is left."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from spiffe import WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

from localpeers.hub import RunningHub, free_port, running_hub
from localpeers.nodes import enroll_node
from localpeers.processes import running
from localpeers.svid import issue_svid_files
from tests.integration.conftest import BootedDevice
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration

OPERATOR = "spiffe://edge.example/operator/admin"
TRUSTCTL = str(Path(sys.executable).parent / "trustctl")


@pytest.fixture
def hub(tmp_path: Path, ek_roots: Path) -> Iterator[RunningHub]:
    with running_hub(tmp_path / "hub", ek_roots=ek_roots, operators=(OPERATOR,)) as running:
        yield running


def operator_args(hub: RunningHub, work: Path) -> list[str]:
    cert, key = issue_svid_files(hub.hub.ca, OPERATOR, work / "operator")
    return ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key)]


def create_entry(hub: RunningHub, work: Path, spiffe_id: str, parent: str, *selectors: str) -> None:
    argv = ["fleet", "entry", "create", "--spiffe-id", spiffe_id, "--parent", parent]
    for selector in selectors:
        argv += ["--selector", selector]
    assert trustctl([*argv, "--ttl", "600", *operator_args(hub, work)]) == 0


@pytest.fixture
def node(hub: RunningHub, golden_device: BootedDevice, tmp_path: Path) -> tuple[str, Path]:
    result = enroll_node(
        hub.url, hub.ca_bundle, tcti=golden_device.tcti, event_log=golden_device.event_log, out_dir=tmp_path / "svid"
    )
    return result.spiffe_id, tmp_path / "svid"


def agent_process(hub: RunningHub, svid_dir: Path, work: Path) -> tuple[list[str], Path]:
    socket_path = work / "agent" / "api.sock"
    argv = [TRUSTCTL, "agent", "run", "--hub", hub.url, "--svid-dir", str(svid_dir), "--socket", str(socket_path)]
    return [*argv, "--state-dir", str(work / "agent-state"), "--entry-poll", "1"], socket_path


def serving(socket_path: Path, spiffe_id: str) -> bool:
    if not socket_path.exists():
        return False
    client = WorkloadApiClient(f"unix://{socket_path}", default_timeout=2)
    try:
        return any(str(s.spiffe_id) == spiffe_id for s in client.fetch_x509_svids())
    except Exception:  # noqa: BLE001 - not yet
        return False
    finally:
        client.close()


def test_py_spiffe_gets_its_identities_through_our_agent(
    hub: RunningHub, node: tuple[str, Path], tmp_path: Path
) -> None:
    node_id, svid_dir = node
    workload = "spiffe://edge.example/workload/web"
    create_entry(hub, tmp_path, workload, node_id, f"unix:uid:{os.getuid()}")
    create_entry(hub, tmp_path, "spiffe://edge.example/workload/other", node_id, "unix:uid:4242")
    argv, socket_path = agent_process(hub, svid_dir, tmp_path)
    metrics_port = free_port()
    argv += ["--metrics-port", str(metrics_port)]
    with running(argv, ready=lambda: serving(socket_path, workload), log=tmp_path / "agent.log"):
        client = WorkloadApiClient(f"unix://{socket_path}", default_timeout=5)
        try:
            svid = client.fetch_x509_svid()
            assert str(svid.spiffe_id) == workload
            assert [str(s.spiffe_id) for s in client.fetch_x509_svids()] == [workload]  # not uid 4242's
            bundle = client.fetch_x509_bundles().get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
            assert bundle is not None
            assert svid.cert_chain[-1].issuer == next(iter(bundle.x509_authorities)).subject

            token = client.fetch_jwt_svid(audience={"spiffe://edge.example/api"})
            assert str(token.spiffe_id) == workload
            jwt_bundles = client.fetch_jwt_bundles()
            assert jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain) is not None
            validated = client.validate_jwt_svid(token.token, "spiffe://edge.example/api")
            assert str(validated.spiffe_id) == workload
            with pytest.raises(Exception, match="Audience doesn't match"):
                client.validate_jwt_svid(token.token, "spiffe://edge.example/someone-else")

            # streamed: a new entry for this workload reaches an open stream without a new call
            updates: list[list[str]] = []
            arrived = threading.Event()

            def on_update(context: object) -> None:
                updates.append(sorted(str(s.spiffe_id) for s in context.x509_svids))  # type: ignore[attr-defined]
                if len(updates) >= 2:
                    arrived.set()

            handle = client.stream_x509_contexts(on_success=on_update, on_error=lambda e: None)
            try:
                create_entry(hub, tmp_path, "spiffe://edge.example/workload/web-admin", node_id, "unix:gid:0")
                assert arrived.wait(15), f"no streamed update: {updates}"
            finally:
                handle.cancel()
            assert updates[-1] == ["spiffe://edge.example/workload/web", "spiffe://edge.example/workload/web-admin"]
        finally:
            client.close()

        # without the security header: refused, as the spec requires
        with grpc.insecure_channel(f"unix://{socket_path}") as channel:
            stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=5)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "security header missing" in str(refused.value.details())

        # a second agent does not steal a socket a live agent serves
        second = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 1
        assert "another agent is serving" in second.stderr

        # the hub is gone: the agent keeps serving what it holds, and says how long is left
        hub.stop()
        time.sleep(1)
        assert serving(socket_path, workload)
        done = subprocess.run(
            [TRUSTCTL, "agent", "status", "--state-dir", str(tmp_path / "agent-state"), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        status = json.loads(done.stdout)
        assert status["node"] == node_id
        assert {s["spiffe_id"] for s in status["svids"]} >= {workload}
        assert all(s["expires_at"] > time.time() + 500 for s in status["svids"])
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert f'edgetrust_agent_svid_seconds_left{{spiffe_id="{workload}"}}' in metrics
        assert "edgetrust_agent_hub_contact_age_seconds" in metrics


def test_a_socket_left_by_a_dead_agent_is_taken_over(hub: RunningHub, node: tuple[str, Path], tmp_path: Path) -> None:
    node_id, svid_dir = node
    create_entry(hub, tmp_path, "spiffe://edge.example/workload/web", node_id, f"unix:uid:{os.getuid()}")
    argv, socket_path = agent_process(hub, svid_dir, tmp_path)
    socket_path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(socket_path))  # bound, never listening, its process "gone": what a killed agent leaves
    dead.close()
    assert socket_path.exists()
    with running(
        argv, ready=lambda: serving(socket_path, "spiffe://edge.example/workload/web"), log=tmp_path / "a.log"
    ):
        pass


def test_a_workload_no_entry_matches_is_refused(hub: RunningHub, node: tuple[str, Path], tmp_path: Path) -> None:
    node_id, svid_dir = node
    create_entry(hub, tmp_path, "spiffe://edge.example/workload/other", node_id, "unix:uid:4242")
    argv, socket_path = agent_process(hub, svid_dir, tmp_path)
    with running(argv, ready=socket_path.exists, log=tmp_path / "agent.log"):
        time.sleep(1)
        client = WorkloadApiClient(f"unix://{socket_path}", default_timeout=5)
        try:
            with pytest.raises(Exception, match="no identity issued"):
                client.fetch_x509_svid()
        finally:
            client.close()


def test_svid_show_reads_the_node_svid(node: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    node_id, svid_dir = node
    assert trustctl(["svid", "show", str(svid_dir / "svid.pem"), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["spiffe_id"] == node_id
    assert view["expires_in_s"] > 3000
    assert trustctl(["svid", "show", str(svid_dir / "bundle.pem")]) == 1  # a CA is not an SVID
    assert "not an X.509-SVID" in capsys.readouterr().err  # a failed check: said on stderr


def test_the_svid_endpoint_refuses_garbage_and_strangers(
    hub: RunningHub, node: tuple[str, Path], tmp_path: Path
) -> None:
    node_id, svid_dir = node
    create_entry(hub, tmp_path, "spiffe://edge.example/workload/web", node_id, "unix:uid:0")
    entry_id = hub.hub.store.entries()[0].id
    context = ssl.create_default_context(cafile=str(hub.ca_bundle))
    context.load_cert_chain(str(svid_dir / "svid.pem"), str(svid_dir / "svid.key"))
    with httpx.Client(base_url=hub.url, verify=context) as http:
        assert http.post("/v1/agent/svids", content=b"{not json").status_code == 422
        assert http.post("/v1/agent/svids", json={"requests": []}).status_code == 422
        assert http.post("/v1/agent/svids", content=b"x" * (3 * 1024 * 1024)).status_code == 413
        foreign = http.post("/v1/agent/svids", json={"requests": [{"entry_id": "nope", "csr": "x"}]})
        assert foreign.status_code == 403
        assert "is not assigned to" in foreign.json()["reason"]
        bad_csr = http.post("/v1/agent/svids", json={"requests": [{"entry_id": entry_id, "csr": "garbage"}]})
        assert bad_csr.status_code == 400  # bad input, not a refusal (errors map by class since issue 12)
        assert "CSR" in bad_csr.json()["reason"]
    cert, key = issue_svid_files(hub.hub.ca, "spiffe://edge.example/workload/stranger", tmp_path / "stranger")
    stranger = ssl.create_default_context(cafile=str(hub.ca_bundle))
    stranger.load_cert_chain(str(cert), str(key))
    with httpx.Client(base_url=hub.url, verify=stranger) as http:
        refused = http.post("/v1/agent/svids", json={"requests": [{"entry_id": entry_id, "csr": "x"}]})
    assert refused.status_code == 403
    assert "is not an enrolled node" in refused.json()["reason"]


def test_a_non_operator_cannot_register_entries(hub: RunningHub, node: tuple[str, Path], tmp_path: Path) -> None:
    node_id, svid_dir = node
    argv = ["fleet", "entry", "create", "--spiffe-id", "spiffe://edge.example/x", "--parent", node_id]
    argv += ["--selector", "unix:uid:0", "--hub", hub.url, "--ca-bundle", str(hub.ca_bundle)]
    argv += ["--svid", str(svid_dir / "svid.pem"), "--svid-key", str(svid_dir / "svid.key")]
    assert trustctl(argv) == 1  # a node's own SVID is not an operator's
    assert hub.hub.store.entries() == []
