"""The shared SPIFFE formats: a bundle built by the CA parses back to the same authorities; every malformed
bundle and every forged JWT-SVID is refused, naming why."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgetrust.spiffe.bundle import (
    MAX_BUNDLE_BYTES,
    SpiffeBundleError,
    build_bundle,
    parse_bundle,
    parse_bundle_document,
    public_jwk,
)
from edgetrust.spiffe.id import SpiffeId, TrustDomain
from edgetrust.spiffe.jwt_svid import JwtSvidError, validate_jwt_svid
from tests.support.jws import hs256_forgery
from trustd.server.ca import SpiffeCA

TD = TrustDomain.parse("edge.example")
ID = SpiffeId.parse("spiffe://edge.example/workload/a")


@pytest.fixture
def ca(tmp_path: Path) -> SpiffeCA:
    return SpiffeCA.load_or_create_root(tmp_path / "ca", trust_domain=TD)


def test_the_cas_bundle_parses_back_to_its_authorities(ca: SpiffeCA) -> None:
    document = ca.bundle(sequence=7, refresh_hint=30)
    parsed = parse_bundle("edge.example", json.dumps(document).encode())
    assert parsed.x509_authorities == ca.x509_authorities()
    assert parsed.sequence == 7
    assert parsed.refresh_hint == 30.0
    assert [k["use"] for k in parsed.jwt_keys] == ["jwt-svid"]
    assert parsed.document == document
    assert parse_bundle_document("edge.example", document).x509_authorities_der() == parsed.x509_authorities_der()


def _x509_entry(ca: SpiffeCA) -> dict[str, Any]:
    return dict(ca.bundle()["keys"][0])


def _jwt_entry(ca: SpiffeCA) -> dict[str, Any]:
    return dict(ca.bundle()["keys"][1])


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d, x, j: {"not": "a jwks"}, "not a JWKS with a keys list"),
        (lambda d, x, j: {"keys": [j]}, "no X.509 authority"),
        (lambda d, x, j: {"keys": [x, {**j, "use": "sig"}]}, "unknown use"),
        (lambda d, x, j: {"keys": [{**x, "x5c": x["x5c"] * 2}]}, "exactly one certificate"),
        (lambda d, x, j: {"keys": [{**x, "x5c": ["!!!"]}]}, "not a CA certificate"),
        (lambda d, x, j: {"keys": [x, {k: v for k, v in j.items() if k != "kid"}]}, "has no kid"),
        (lambda d, x, j: {"keys": [x, j, j]}, "two jwt-svid keys"),
        (lambda d, x, j: {"keys": [x, {"use": "jwt-svid", "kid": "k", "kty": "oct", "k": "c2VjcmV0"}]}, "EC or RSA"),
        (lambda d, x, j: {"keys": [x, {**j, "x": "AAAA"}]}, "not a public key"),
        (lambda d, x, j: {**d, "spiffe_sequence": "7"}, "spiffe_sequence"),
        (lambda d, x, j: {**d, "spiffe_sequence": -1}, "spiffe_sequence"),
        (lambda d, x, j: {**d, "spiffe_refresh_hint": [1]}, "spiffe_refresh_hint"),
        (lambda d, x, j: {**d, "spiffe_refresh_hint": float("nan")}, "spiffe_refresh_hint"),
    ],
)
def test_malformed_bundles_are_refused(ca: SpiffeCA, mutate: Any, reason: str) -> None:
    document = mutate(ca.bundle(), _x509_entry(ca), _jwt_entry(ca))
    with pytest.raises(SpiffeBundleError, match=reason):
        parse_bundle("peer.example", json.dumps(document).encode())


def test_a_jwt_key_with_its_private_part_is_refused(ca: SpiffeCA) -> None:
    private = jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    with pytest.raises(SpiffeBundleError, match="private part"):
        parse_bundle_document("peer.example", {"keys": [_x509_entry(ca), {**private, "use": "jwt-svid", "kid": "k"}]})


def test_a_leaf_certificate_is_no_authority(ca: SpiffeCA) -> None:
    leaf = ca.issue_x509_svid(_csr(), ID, ttl=timedelta(hours=1)).certificate
    der = base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()
    with pytest.raises(SpiffeBundleError, match="not a CA certificate"):
        parse_bundle_document("peer.example", {"keys": [{**_x509_entry(ca), "x5c": [der]}]})


def test_oversized_and_truncated_bodies_are_refused_not_cut(ca: SpiffeCA) -> None:
    body = json.dumps(ca.bundle()).encode()
    with pytest.raises(SpiffeBundleError, match="over"):
        parse_bundle("peer.example", body + b" " * MAX_BUNDLE_BYTES)
    with pytest.raises(SpiffeBundleError, match=r"not JSON \(truncated\?\)"):
        parse_bundle("peer.example", body[: len(body) // 2])


def test_rsa_keys_are_published_as_rsa_jwks() -> None:
    public = rsa.generate_private_key(65537, 2048).public_key()
    assert public_jwk(public)["kty"] == "RSA"
    with pytest.raises(SpiffeBundleError, match="cannot be published"):
        public_jwk(object())
    assert build_bundle([], {"k": public}, sequence=1, refresh_hint=5)["keys"][0]["kid"] == "k"


# -- JWT-SVIDs ---------------------------------------------------------------------------------------------
def _token(key: Any, *, alg: str = "ES256", kid: str = "k1", **claims: Any) -> str:
    now = datetime.now(UTC)
    body = {"sub": str(ID), "aud": ["a"], "exp": now + timedelta(minutes=5), **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def _keys(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> dict[str, dict[str, Any]]:
    return {"k1": public_jwk(key.public_key())}


def test_a_jwt_svid_verifies_under_its_kid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert validate_jwt_svid(_token(key), _keys(key), audience="a")["sub"] == str(ID)
    rsa_key = rsa.generate_private_key(65537, 2048)
    assert validate_jwt_svid(_token(rsa_key, alg="PS256"), _keys(rsa_key), audience="a")["sub"] == str(ID)


def test_forged_jwt_svids_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    keys = _keys(key)
    with pytest.raises(JwtSvidError, match="unknown key id 'k2'"):
        validate_jwt_svid(_token(key, kid="k2"), keys, audience="a")
    with pytest.raises(JwtSvidError, match="'none' is not allowed"):
        validate_jwt_svid(_token(None, alg="none"), keys, audience="a")
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = json.dumps({"sub": str(ID), "aud": "a", "exp": 9999999999}).encode()
    hmac = hs256_forgery(payload, public_pem, "k1")
    with pytest.raises(JwtSvidError, match="'HS256' is not allowed"):
        validate_jwt_svid(hmac, keys, audience="a")
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(JwtSvidError, match="rejected"):
        validate_jwt_svid(_token(other), keys, audience="a")  # a key we do not hold, under our kid
    with pytest.raises(JwtSvidError, match="rejected"):  # an RSA algorithm against an EC key
        validate_jwt_svid(_token(rsa.generate_private_key(65537, 2048), alg="PS256"), keys, audience="a")
    with pytest.raises(JwtSvidError, match="rejected"):
        validate_jwt_svid(_token(key), keys, audience="b")
    with pytest.raises(JwtSvidError, match=r"(?i)expired"):
        validate_jwt_svid(_token(key, exp=datetime.now(UTC) - timedelta(minutes=1)), keys, audience="a")
    head, body, sig = _token(key).split(".")
    with pytest.raises(JwtSvidError):
        validate_jwt_svid(f"{head}.{body[:-2]}AA.{sig}", keys, audience="a")
    with pytest.raises(JwtSvidError, match="not a JWT"):
        validate_jwt_svid("not.a-jwt", keys, audience="a")
    with pytest.raises(JwtSvidError, match="rejected"):
        validate_jwt_svid(_token(key, alg="ES256", sub=None), keys, audience="a")


def _csr() -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
