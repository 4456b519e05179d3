"""Federation with real SPIRE (v1.13.3): trustd and spire-server exchange bundles over their SPIFFE bundle endpoints
(https_spiffe both ways, bootstrapped once); then a workload holding our SVID (from our agent) and one holding a
SPIRE SVID (from spire-agent, entry federated with edge.example) establish mTLS in both directions. Before
federation the same handshakes fail. A truncated or wrongly signed federated bundle is refused and the bundle
held before stays.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient

from localpeers.hub import RunningHub, running_hub
from localpeers.nodes import enroll_node
from localpeers.postgres import PostgresServer, running_postgres
from localpeers.processes import running
from localpeers.spire import register, running_spire_agent, running_spire_server, wait_for_svid
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from tests.integration.conftest import BootedDevice
from tests.support.waiting import until
from trustd.cli.trustctl import main as trustctl
from trustd.server.federation import FederationError, Peer

pytestmark = pytest.mark.integration
OPERATOR = "spiffe://edge.example/operator/admin"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


def x509_context_files(socket_path: Path, work: Path, name: str) -> tuple[Path, Path, Path, str]:
    """cert chain, key, all trust roots (own and federated) as PEM files, and the SPIFFE ID."""
    client = WorkloadApiClient(f"unix://{socket_path}", default_timeout=10)
    try:
        context = client.fetch_x509_context()
    finally:
        client.close()
    svid = context.default_svid
    cert = work / f"{name}.pem"
    key = work / f"{name}.key"
    roots = work / f"{name}-roots.pem"
    cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain))
    key.write_bytes(
        svid.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    roots.write_bytes(
        b"".join(
            a.public_bytes(serialization.Encoding.PEM)
            for bundle in context.x509_bundle_set.bundles
            for a in bundle.x509_authorities
        )
    )
    return cert, key, roots, str(svid.spiffe_id)


def mtls(server: tuple[Path, Path, Path, str], client: tuple[Path, Path, Path, str]) -> str:
    """One mutual TLS handshake; returns what the server saw of the client, or the failure."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(server[0]), str(server[1]))
    server_context.load_verify_locations(str(server[2]))
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False  # SPIFFE: the peer is named by its URI SAN, not a host name
    client_context.load_cert_chain(str(client[0]), str(client[1]))
    client_context.load_verify_locations(str(client[2]))
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def accept() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls:
                seen.append("ok")
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            seen.append(f"server: {exc}")

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname()) as raw, client_context.wrap_socket(raw) as tls:
            tls.sendall(b"x")
            outcome = "ok"
    except (ssl.SSLError, OSError) as exc:
        outcome = f"client: {exc}"
    thread.join(timeout=10)
    listener.close()
    return outcome if outcome != "ok" else (seen[0] if seen else "no server verdict")


@pytest.fixture
def our_workload(
    tmp_path: Path, ek_roots: Path, golden_device: BootedDevice
) -> Iterator[tuple[RunningHub, Path, Path]]:
    federation_file = tmp_path / "federation.yaml"
    with running_hub(
        tmp_path / "hub", ek_roots=ek_roots, operators=(OPERATOR,), federation_file=federation_file
    ) as hub:
        node = enroll_node(
            hub.url,
            hub.ca_bundle,
            tcti=golden_device.tcti,
            event_log=golden_device.event_log,
            out_dir=tmp_path / "svid",
        )
        cert, key = issue_svid_files(hub.hub.ca, OPERATOR, tmp_path / "operator")
        argv = ["fleet", "entry", "create", "--spiffe-id", "spiffe://edge.example/workload/api"]
        argv += ["--parent", node.spiffe_id, "--selector", f"unix:uid:{os.getuid()}", "--hub", hub.url]
        assert trustctl([*argv, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key)]) == 0
        socket_path = tmp_path / "agent" / "api.sock"
        agent = [str(Path(sys.executable).parent / "trustctl"), "agent", "run", "--hub", hub.url, "--svid-dir"]
        agent += [str(tmp_path / "svid"), "--socket", str(socket_path), "--state-dir", str(tmp_path / "state")]
        with running([*agent, "--entry-poll", "1"], ready=socket_path.exists, log=tmp_path / "agent.log"):
            wait_for_svid(socket_path, "spiffe://edge.example/workload/api")
            yield hub, socket_path, federation_file


def test_workloads_of_both_trust_domains_authenticate_each_other_after_federation(
    our_workload: tuple[RunningHub, Path, Path], postgres: PostgresServer, tmp_path: Path
) -> None:
    hub, our_socket, federation_file = our_workload
    our_bundle = tmp_path / "edge.example.json"
    our_bundle.write_text(json.dumps(hub.hub.ca.bundle()))
    federates = (
        '    federates_with "edge.example" {\n'
        f'      bundle_endpoint_url = "{hub.url}/v1/bundle"\n'
        '      bundle_endpoint_profile "https_spiffe" {\n'
        '        endpoint_spiffe_id = "spiffe://edge.example/trustd"\n'
        "      }\n    }\n"
    )
    with (
        running_spire_server(tmp_path / "spire", postgres, bundle_endpoint=True, federates_with=federates) as spire,
        running_spire_agent(tmp_path / "spire-agent", spire) as spire_agent,
    ):
        theirs_id = "spiffe://spire.example/workload/db"
        register(spire, spire_agent, theirs_id, f"unix:uid:{os.getuid()}")
        wait_for_svid(spire_agent.socket, theirs_id)

        ours = x509_context_files(our_socket, tmp_path, "ours-before")
        theirs = x509_context_files(spire_agent.socket, tmp_path, "theirs-before")
        assert "certificate verify failed" in mtls(ours, theirs)  # not federated: each refuses the other
        assert "certificate verify failed" in mtls(theirs, ours)

        # SPIRE: bootstrap our bundle once; it then follows our endpoint (https_spiffe)
        spire.cli("bundle", "set", "-format", "spiffe", "-id", "spiffe://edge.example", "-path", str(our_bundle))
        entry_id = next(
            line.split(":", 1)[1].strip()
            for line in spire.cli("entry", "show", "-spiffeID", theirs_id).splitlines()
            if line.startswith("Entry ID")
        )
        update = ["entry", "update", "-entryID", entry_id, "-parentID", spire_agent.spiffe_id]
        spire.cli(
            *update,
            "-spiffeID",
            theirs_id,
            "-selector",
            f"unix:uid:{os.getuid()}",
            "-federatesWith",
            "spiffe://edge.example",
        )
        # us: bootstrap SPIRE's bundle once; then we follow its endpoint
        (tmp_path / "spire.example.json").write_text(spire.cli("bundle", "show", "-format", "spiffe"))
        federation_file.write_text(
            yaml.safe_dump(
                {
                    "federates_with": [
                        {
                            "trust_domain": "spire.example",
                            "bundle_endpoint_url": f"https://127.0.0.1:{spire.bundle_port}",
                            "endpoint_spiffe_id": "spiffe://spire.example/spire/server",
                            "bootstrap_bundle": "spire.example.json",
                        }
                    ]
                }
            )
        )
        # the hub's own federation watcher reads the file and fetches SPIRE's bundle from its endpoint
        fetched = hub.hub.settings.data_dir / "federation" / "spire.example.json"
        until(
            lambda: fetched.exists() and not hub.hub.federation.errors,
            "the federation watcher to fetch spire.example's bundle without error",
            timeout_s=30,
        )

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ours = x509_context_files(our_socket, tmp_path, "ours")
            theirs = x509_context_files(spire_agent.socket, tmp_path, "theirs")
            if mtls(ours, theirs) == "ok" and mtls(theirs, ours) == "ok":
                break
            time.sleep(1)
        assert mtls(ours, theirs) == "ok", "our workload (server) and SPIRE's (client)"
        assert mtls(theirs, ours) == "ok", "SPIRE's workload (server) and ours (client)"
        assert ours[3] == "spiffe://edge.example/workload/api"
        assert theirs[3] == theirs_id


def test_a_bad_federated_bundle_is_refused_and_the_old_one_stays(
    our_workload: tuple[RunningHub, Path, Path], tmp_path: Path
) -> None:
    hub, _, federation_file = our_workload
    peer_ca = TestCA(tmp_path / "peer-ca")  # a stand-in peer: our own TLS server, serving what we choose
    good = {"keys": [_x509_key(peer_ca.ca_file)], "spiffe_sequence": 1}
    (tmp_path / "peer.json").write_text(json.dumps(good))
    served: dict[str, bytes] = {"body": b'{"keys": [ {"use": "x509-svid", "x5c": ["MII'}  # truncated
    server_cert = _svid_from(peer_ca, "spiffe://peer.example/bundle-endpoint")
    port = _serve_bundle(server_cert, served)
    federation_file.write_text(
        yaml.safe_dump(
            {
                "federates_with": [
                    {
                        "trust_domain": "peer.example",
                        "bundle_endpoint_url": f"https://127.0.0.1:{port}/bundle",
                        "endpoint_spiffe_id": "spiffe://peer.example/bundle-endpoint",
                        "bootstrap_bundle": "peer.json",
                    }
                ]
            }
        )
    )
    federation = hub.hub.federation
    until(lambda: "peer.example" in federation.errors, "the federation watcher to try peer.example", timeout_s=30)
    assert "not JSON (truncated?)" in federation.errors["peer.example"]
    assert federation.bundles["peer.example"].sequence == 1  # the bootstrap bundle stays in force

    other = TestCA(tmp_path / "other-ca")  # an endpoint whose certificate does not chain to the held bundle
    port = _serve_bundle(_svid_from(other, "spiffe://peer.example/bundle-endpoint"), {"body": b"{}"})
    federation_file.write_text(federation_file.read_text().replace(str(_port_of(federation_file)), str(port)))
    until(
        lambda: "certificate verify failed" in federation.errors.get("peer.example", ""),
        "the federation watcher to take the changed file and refuse the endpoint",
        timeout_s=30,
    )
    assert federation.bundles["peer.example"].sequence == 1
    plain = {"trust_domain": "x", "bundle_endpoint_url": "http://x", "endpoint_spiffe_id": "spiffe://x/y"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"federates_with": [{**plain, "bootstrap_bundle": "p"}]}))
    with pytest.raises(FederationError, match="must be https"):
        Peer.load_all(bad)


def _port_of(federation_file: Path) -> int:
    url = yaml.safe_load(federation_file.read_text())["federates_with"][0]["bundle_endpoint_url"]
    return int(url.split(":")[2].split("/")[0])


def _x509_key(ca_file: Path) -> dict[str, Any]:
    cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    return {
        "use": "x509-svid",
        "kty": "EC",
        "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
    }


def _svid_from(ca: TestCA, spiffe_id: str) -> tuple[Path, Path]:
    """A server certificate carrying a SPIFFE ID, issued by a test CA (what a bundle endpoint presents)."""
    issued = ca.issue("endpoint", hosts=("127.0.0.1",), uris=(spiffe_id,))
    return issued.cert, issued.key


def _serve_bundle(cert: tuple[Path, Path], served: dict[str, bytes]) -> int:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(4096)
                    body = served["body"]
                    tls.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
                    )
            except (ssl.SSLError, OSError):
                continue

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])
