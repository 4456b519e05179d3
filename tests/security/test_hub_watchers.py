"""A revocation made through another replica reaches a running hub by its own watcher; the federation watcher
takes nothing a hostile peer endpoint sends that is not a SPIFFE bundle it can trust.

The attack this stops: a cluster revoked at one replica keeps being served by another, whose long polls
never wake, because the watcher that notices revocations in the shared store did not run. Test hubs now run
as `trustd serve` runs them (lifespan on), and nothing here drives the watcher: a cluster holds a long poll
open on the running hub, the revocation is written to the store by a second replica's code, and the poll must
wake within a few seconds (not at its 30 s end), after which the revoked cluster is refused.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.spiffe.id import TrustDomain
from localpeers.hub import running_hub, running_policy_hub
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from tests.support.two_sites import FLEET, OPERATOR
from tests.support.waiting import until
from trustd.server.api.policy import REVOCATIONS_HEADER
from trustd.server.revocations import Revocations, load_or_create_key
from trustd.server.store import open_store

WAIT_S = 30


def _client(url: str, roots: Path, files: tuple[Path, Path]) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(roots))
    context.load_cert_chain(str(files[0]), str(files[1]))
    return httpx.Client(base_url=url, verify=context, timeout=WAIT_S + 15)


def test_revocation_at_another_replica_wakes_this_hubs_long_polls_by_itself(tmp_path: Path) -> None:
    public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with running_policy_hub(tmp_path / "hub", fleet=FLEET, publisher_keys={"ci-1": public}) as hub:
        site_a = issue_svid_files(hub.hub.ca, "spiffe://edge.example/cluster/site-a", tmp_path / "site-a")
        site_b = issue_svid_files(hub.hub.ca, "spiffe://edge.example/cluster/site-b", tmp_path / "site-b")
        with _client(hub.url, hub.ca_bundle, site_a) as a, _client(hub.url, hub.ca_bundle, site_b) as b:
            first = a.get("/v1/policy/bundle")
            before = first.headers[REVOCATIONS_HEADER]
            assert b.get("/v1/policy/bundle").status_code in (204, 304)

            # site-a holds a long poll open; nothing else reaches the hub while it waits
            answers: list[httpx.Response] = []
            poll = threading.Thread(
                target=lambda: answers.append(
                    a.get("/v1/policy/bundle", params={"wait": WAIT_S}, headers={REVOCATIONS_HEADER: before})
                )
            )
            poll.start()
            time.sleep(1.5)
            assert not answers, "the long poll answered before anything changed"

            # another replica (same store, its own code and key) revokes site-b
            settings = hub.hub.settings
            other_store = open_store(settings.effective_store_url)
            other = Revocations(other_store, load_or_create_key(settings.revocations_dir), TrustDomain("edge.example"))
            asked = time.monotonic()
            other.revoke("spiffe://edge.example/cluster/site-b", reason="stolen", by=OPERATOR)
            other_store.close()
            poll.join(WAIT_S + 15)
            waited = time.monotonic() - asked
            (woke,) = answers

            # the running hub's watcher noticed: the poll woke long before its end, carrying the new list
            assert woke.status_code in (204, 304), woke.text
            assert waited < 10, f"the long poll woke after {waited:.1f} s: the watcher did not run"
            assert woke.headers[REVOCATIONS_HEADER] != before
            refused = b.get("/v1/policy/bundle")
            assert refused.status_code == 403
            assert "is revoked" in refused.json()["reason"]
            # nothing else changed: site-a is still served, and the list holds exactly the one revocation
            assert a.get("/v1/policy/bundle").status_code in (204, 304)
            assert [r.spiffe_id for r in hub.hub.store.revocations()] == ["spiffe://edge.example/cluster/site-b"]


@contextmanager
def _hostile_bundle_endpoint(ca: TestCA, served: dict[str, bytes | None]) -> Iterator[int]:
    """A peer's bundle endpoint (a valid X.509-SVID of the peer's trust domain) sending what the test says:
    `served["body"]` as the answer, or, when it is None, an endless chunked body."""
    issued = ca.issue("endpoint", hosts=("127.0.0.1",), uris=("spiffe://peer.example/bundle-endpoint",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(issued.cert), str(issued.key))
    listener = socket.create_server(("127.0.0.1", 0))
    sent = {"bytes": 0}

    def answer(tls: ssl.SSLSocket) -> None:
        tls.recv(4096)
        body = served["body"]
        if body is not None:
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            tls.sendall(head + body)
            return
        tls.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
        chunk = b" " * 65536
        while sent["bytes"] < 64 * 1024 * 1024:  # far past any limit; stops when the hub hangs up
            tls.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent["bytes"] += len(chunk)

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    answer(tls)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() the server thread is blocked in
        listener.close()
        thread.join(10)


def test_a_federated_peer_sending_an_endless_bundle_or_a_shared_secret_jwt_key_is_refused_and_the_held_bundle_stays(
    tmp_path: Path,
) -> None:
    peer_ca = TestCA(tmp_path / "peer-ca")
    der = base64.b64encode(peer_ca.cert.public_bytes(serialization.Encoding.DER)).decode()
    bootstrap = {"keys": [{"use": "x509-svid", "kty": "EC", "x5c": [der]}], "spiffe_sequence": 1}
    (tmp_path / "peer.json").write_text(json.dumps(bootstrap))
    # the peer's next bundle would make an HMAC secret a JWT-SVID key: every workload holding the bundle could
    # then mint JWT-SVIDs of peer.example
    secret = {"use": "jwt-svid", "kid": "k", "kty": "oct", "k": base64.urlsafe_b64encode(b"s" * 32).decode()}
    shared_secret = json.dumps({**bootstrap, "keys": [*bootstrap["keys"], secret], "spiffe_sequence": 2}).encode()
    served: dict[str, bytes | None] = {"body": None}
    ek_roots = tmp_path / "ek-roots"
    ek_roots.mkdir()
    (ek_roots / "unused.pem").write_bytes(TestCA(tmp_path / "unused-ek-ca").ca_file.read_bytes())
    with _hostile_bundle_endpoint(peer_ca, served) as port:
        federation_file = tmp_path / "federation.yaml"
        peer = {
            "trust_domain": "peer.example",
            "bundle_endpoint_url": f"https://127.0.0.1:{port}/bundle",
            "endpoint_spiffe_id": "spiffe://peer.example/bundle-endpoint",
            "bootstrap_bundle": "peer.json",
        }
        federation_file.write_text(yaml.safe_dump({"federates_with": [peer]}))
        with running_hub(tmp_path / "hub", ek_roots=ek_roots, federation_file=federation_file) as hub:
            federation = hub.hub.federation
            held = hub.hub.settings.data_dir / "federation" / "peer.example.json"
            until(lambda: "peer.example" in federation.errors, "the federation watcher to fetch peer.example")
            assert "passes the limit" in federation.errors["peer.example"], federation.errors
            assert federation.bundles["peer.example"].sequence == 1
            assert federation.jwks()["peer.example"] == bootstrap  # what the hub hands its agents
            assert not held.exists()

            served["body"] = shared_secret
            federation_file.write_text(federation_file.read_text() + "\n")  # wakes the watcher now
            until(
                lambda: "'oct'" in federation.errors.get("peer.example", ""),
                "the federation watcher to fetch peer.example's next bundle",
            )
            assert "jwt-svid key 'k' has type 'oct': EC or RSA only" in federation.errors["peer.example"]
            assert federation.bundles["peer.example"].sequence == 1
            assert federation.jwks()["peer.example"] == bootstrap
            assert not held.exists()
