from __future__ import annotations

import base64
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from edgetrust.spiffe.id import SpiffeId, TrustDomain
from trustd.errors import CAConfigError, CSRError, JWTSVIDError
from trustd.server.ca import SpiffeCA

TD = TrustDomain.parse("edge.example")
ID = SpiffeId.parse("spiffe://edge.example/site/lab/node/gw-01")


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None, *, san: str | None = None) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i want to be admin")])
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), False)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path) -> SpiffeCA:
    return SpiffeCA.load_or_create_root(tmp_path / "ca", trust_domain=TD)


def test_x509_svid_conforms_to_the_spiffe_spec(ca: SpiffeCA) -> None:
    svid = ca.issue_x509_svid(_csr(san="spiffe://evil.example/admin"), ID, ttl=timedelta(hours=1))
    cert = svid.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ID)]  # the CSR's SAN is ignored
    assert len(list(san)) == 1
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(hours=1, seconds=31)
    PolicyBuilder().store(Store(list(ca.x509_authorities()))).build_client_verifier().verify(cert, [])


def test_ttl_is_capped_by_the_ca(ca: SpiffeCA) -> None:
    svid = ca.issue_x509_svid(_csr(), ID, ttl=timedelta(days=3650))
    assert svid.not_after == ca.certificate.not_valid_after_utc


def test_bad_csrs(ca: SpiffeCA) -> None:
    with pytest.raises(CSRError, match="does not parse"):
        ca.issue_x509_svid(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ID,
            ttl=timedelta(hours=1),
        )
    weak = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the weak key under test
    with pytest.raises(CSRError, match="1024"):
        ca.issue_x509_svid(_csr(weak), ID, ttl=timedelta(hours=1))
    tampered = bytearray(x509.load_pem_x509_csr(_csr()).public_bytes(serialization.Encoding.DER))
    tampered[-5] ^= 1
    with pytest.raises(CSRError):
        ca.issue_x509_svid(bytes(tampered), ID, ttl=timedelta(hours=1))
    with pytest.raises(CSRError, match="outside the trust domain"):
        ca.issue_x509_svid(_csr(), SpiffeId.parse("spiffe://other.example/x"), ttl=timedelta(hours=1))


def test_keys_are_0600_and_readable_keys_are_refused(tmp_path: Path) -> None:
    SpiffeCA.load_or_create_root(tmp_path / "ca", trust_domain=TD)
    for name in ("ca.key", "jwt.key"):
        assert stat.S_IMODE((tmp_path / "ca" / name).stat().st_mode) == 0o600
    os.chmod(tmp_path / "ca" / "ca.key", 0o644)
    with pytest.raises(CAConfigError, match="chmod 600"):
        SpiffeCA.load(tmp_path / "ca", trust_domain=TD)


def test_reload_keeps_the_same_ca(tmp_path: Path) -> None:
    first = SpiffeCA.load_or_create_root(tmp_path / "ca", trust_domain=TD)
    again = SpiffeCA.load_or_create_root(tmp_path / "ca", trust_domain=TD)
    assert first.certificate == again.certificate
    with pytest.raises(CAConfigError, match="not the trust domain"):
        SpiffeCA.load(tmp_path / "ca", trust_domain=TrustDomain.parse("other.example"))


def test_intermediate_ca_chains_to_the_upstream_root(tmp_path: Path) -> None:
    upstream = SpiffeCA.load_or_create_root(tmp_path / "upstream", trust_domain=TD)
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import serialization

    now = datetime.now(UTC)
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site CA")]))
        .issuer_name(upstream.certificate.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(TD.id))]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(upstream.certificate.public_key()), False)  # type: ignore[arg-type]
        .sign(upstream._key, hashes.SHA256())
    )
    d = tmp_path / "inter"
    d.mkdir()
    from trustd.server.ca import write_private_key

    write_private_key(d / "ca.key", key)
    (d / "ca.crt").write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    (d / "chain.pem").write_bytes(upstream.certificate.public_bytes(serialization.Encoding.PEM))
    ca = SpiffeCA.load(d, trust_domain=TD)
    svid = ca.issue_x509_svid(_csr(), ID, ttl=timedelta(hours=1))
    assert len(svid.chain) == 2
    assert ca.x509_authorities() == (upstream.certificate,)
    PolicyBuilder().store(Store([upstream.certificate])).build_client_verifier().verify(svid.certificate, [inter])


def test_jwt_svid_round_trip_and_refusals(ca: SpiffeCA, tmp_path: Path) -> None:
    token = ca.issue_jwt_svid(ID, audience=["spiffe://edge.example/hub"], ttl=timedelta(minutes=5))
    assert ca.validate_jwt_svid(token, audience="spiffe://edge.example/hub") == ID
    with pytest.raises(JWTSVIDError, match=r"(?i)audience"):
        ca.validate_jwt_svid(token, audience="spiffe://edge.example/other")
    old = ca.issue_jwt_svid(ID, audience=["a"], ttl=timedelta(minutes=5), now=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(JWTSVIDError, match=r"(?i)expired"):
        ca.validate_jwt_svid(old, audience="a")
    head, body, sig = token.split(".")
    with pytest.raises(JWTSVIDError):
        ca.validate_jwt_svid(f"{head}.{body}x.{sig}", audience="spiffe://edge.example/hub")
    other = SpiffeCA.load_or_create_root(tmp_path / "other", trust_domain=TD)
    with pytest.raises(JWTSVIDError, match="unknown key id"):
        ca.validate_jwt_svid(other.issue_jwt_svid(ID, audience=["a"], ttl=timedelta(minutes=1)), audience="a")
    with pytest.raises(JWTSVIDError, match="at least one audience"):
        ca.issue_jwt_svid(ID, audience=[], ttl=timedelta(minutes=1))
    assert jwt.get_unverified_header(token)["alg"] == "ES256"


def test_bundle_is_a_spiffe_jwks(ca: SpiffeCA) -> None:
    bundle = ca.bundle()
    uses = {k["use"] for k in bundle["keys"]}
    assert uses == {"x509-svid", "jwt-svid"}
    x509_key = next(k for k in bundle["keys"] if k["use"] == "x509-svid")
    assert x509.load_der_x509_certificate(base64.b64decode(x509_key["x5c"][0])) == ca.certificate
    assert next(k for k in bundle["keys"] if k["use"] == "jwt-svid")["kid"]
    assert bundle["spiffe_sequence"] >= 1
