"""Garbage at the enrollment API gets a clear 4xx answer and is never a server error or an enrollment."""

from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustd.server.ca import material
from trustd.server.hub import Hub, build_hub
from trustd.server.settings import TrustdSettings

REFERENCE_VALUES = {
    "device_classes": {"edge-gateway": {"pcr_bank": "sha256", "pcrs": {0: ["00" * 32]}, "event_log": "optional"}}
}


def _self_signed_root(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test vendor root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    path.write_bytes(cert.public_bytes(Encoding.PEM))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("hub")
    (work / "roots").mkdir()
    _self_signed_root(work / "roots" / "root.pem")
    (work / "refvalues.yaml").write_text(yaml.safe_dump(REFERENCE_VALUES))
    settings = TrustdSettings(
        data_dir=work / "data", ek_roots_dir=work / "roots", reference_values=work / "refvalues.yaml"
    )
    material.init(settings)  # `trustd ca init`: a hub never makes its own
    hub = build_hub(settings)
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def client(hub: Hub) -> Iterator[TestClient]:
    with TestClient(hub.app, raise_server_exceptions=False) as c:
        yield c


def _valid_shape() -> dict[str, object]:
    b = base64.b64encode(os.urandom(64)).decode()
    return {"ek_certificate": b, "ek_public": b, "ak_public": b, "device_class": "edge-gateway", "claims": {}}


def test_not_json(client: TestClient) -> None:
    answer = client.post("/v1/enroll/challenge", content=b"\x00\xff{", headers={"content-type": "application/json"})
    assert answer.status_code in (400, 422)


def test_unknown_fields_are_refused(client: TestClient) -> None:
    assert client.post("/v1/enroll/challenge", json={**_valid_shape(), "accept_any_ek": True}).status_code == 422


def test_oversized_body(client: TestClient) -> None:
    answer = client.post("/v1/enroll/challenge", content=b"{}", headers={"content-length": str(64 * 1024 * 1024)})
    assert answer.status_code == 413
    assert answer.json()["error"] == "body_too_large"


@pytest.mark.parametrize("path", ["/v1/enroll/challenge", "/v1/agent/svids"])
@pytest.mark.parametrize("length", [str(64 * 1024 * 1024).encode(), b"12abc", "\u00b2".encode()])
def test_a_body_declared_too_large_or_not_a_size_is_413_on_the_app_and_on_the_svid_fast_path(
    client: TestClient, path: str, length: bytes
) -> None:
    # the fast path (trustd.server.api.agent.SvidFastPath) reads through the same bounded reader as the app's BodyLimit
    answer = client.post(path, content=b"{}", headers={"content-length": length})
    assert answer.status_code == 413
    assert answer.json()["error"] == "body_too_large"


@pytest.mark.parametrize("path", ["/v1/enroll/challenge", "/v1/agent/svids"])
def test_a_chunked_body_streamed_past_the_limit_is_413(client: TestClient, path: str) -> None:
    chunks = iter([b"x" * (1024 * 1024)] * 8)  # no Content-Length: counted as it streams
    answer = client.post(path, content=chunks)
    assert answer.status_code == 413
    assert answer.json()["error"] == "body_too_large"


def test_random_structures_are_malformed_evidence_not_crashes(client: TestClient, hub: Hub) -> None:
    answer = client.post("/v1/enroll/challenge", json=_valid_shape())
    assert answer.status_code == 400
    assert answer.json()["error"] in ("malformed_evidence", "unsupported_algorithm")
    assert hub.store.devices() == []


def test_unknown_challenge(client: TestClient) -> None:
    body = {
        "challenge_id": "x",
        "activated_secret": "",
        "attest": "",
        "signature": "",
        "pcr_values": {},
        "csr": "",
    }
    answer = client.post("/v1/enroll/complete", json=body)
    assert answer.status_code == 403
    assert answer.json()["error"] == "challenge_invalid"


_b64 = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
_text = st.text(max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.fixed_dictionaries(
        {
            "ek_certificate": st.one_of(_b64, _text),
            "ek_public": st.one_of(_b64, _text),
            "ak_public": st.one_of(_b64, _text),
            "device_class": st.one_of(st.just("edge-gateway"), _text),
            "claims": st.dictionaries(_text, _text, max_size=3),
        }
    )
)
def test_fuzzed_challenge_requests_never_break_the_hub(client: TestClient, hub: Hub, body: dict[str, object]) -> None:
    answer = client.post("/v1/enroll/challenge", json=body)
    assert answer.status_code in (400, 403, 422), answer.text
    assert hub.store.devices() == []


def test_oversized_streamed_body_without_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * (1024 * 1024)

    answer = client.post("/v1/enroll/challenge", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413


def test_bundle_endpoints_serve_the_trust_domain(client: TestClient, hub: Hub) -> None:
    bundle = client.get("/v1/bundle").json()
    assert {k["use"] for k in bundle["keys"]} == {"x509-svid", "jwt-svid"}
    assert client.get("/v1/bundle.pem").content == hub.ca.x509_authorities_pem()


def test_trustd_bundle_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trustd.cli.server import main

    assert main(["bundle", "--pem", "--data-dir", str(tmp_path)]) == 1  # no trust material: none is made
    assert "trustd ca init" in capsys.readouterr().err
    assert not (tmp_path / "ca").exists()
    assert main(["ca", "init", "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["bundle", "--pem", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("-----BEGIN CERTIFICATE-----")
    assert main(["bundle", "--data-dir", str(tmp_path), "--trust-domain", "Bad Domain"]) == 1
    assert "trust domain" in capsys.readouterr().err
