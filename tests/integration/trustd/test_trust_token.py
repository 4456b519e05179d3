"""The hub's keys on a real PKCS#11 token (SoftHSM2): `trustd ca init` makes them once, every replica that opens
the token signs with the same CA, JWT and revocation keys, and what one signs the others' bundles verify."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetrust.bundles.format import Bundle
from edgetrust.bundles.signing import sign_files, verify_bundle
from edgetrust.spiffe.id import SpiffeId
from localpeers.softhsm import SoftToken
from trustd.cli.server import main
from trustd.errors import CAConfigError
from trustd.server.ca import material
from trustd.server.settings import TrustdSettings

NODE = SpiffeId.parse("spiffe://edge.example/site/s1/node/n1")


def _settings(token: SoftToken, data_dir: Path) -> TrustdSettings:
    return TrustdSettings(data_dir=data_dir, trust_domain="edge.example", **token.settings())  # type: ignore[arg-type]


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import serialization

    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def test_two_replicas_on_one_token_sign_for_each_other(soft_token: SoftToken, tmp_path: Path) -> None:
    material.init(_settings(soft_token, tmp_path / "init"))
    a = material.load(_settings(soft_token, tmp_path / "a"))
    b = material.load(_settings(soft_token, tmp_path / "b"))
    try:
        assert a.ca.bundle() == b.ca.bundle()  # one trust: the same bundle at every replica
        svid = a.ca.issue_x509_svid(_csr(), NODE, ttl=timedelta(hours=1))
        svid.certificate.verify_directly_issued_by(b.ca.x509_authorities()[0])
        jwt_svid = a.ca.issue_jwt_svid(NODE, audience=["syncer"], ttl=timedelta(minutes=5))
        assert b.ca.validate_jwt_svid(jwt_svid, audience="syncer") == NODE
        signed = sign_files({"revocations.json": b"{}"}, a.revocation_key)
        bundle = Bundle(files=signed)
        assert verify_bundle(bundle, {"trustd-revocations": b.revocation_key.private_key.public_key()})
    finally:
        a.close()
        b.close()


def test_init_never_replaces_trust_material(soft_token: SoftToken, tmp_path: Path) -> None:
    settings = _settings(soft_token, tmp_path / "hub")
    material.init(settings)
    first = material.load(settings)
    first.close()
    with pytest.raises(CAConfigError, match="already holds trust material"):
        material.init(settings)
    again = material.load(settings)
    again.close()
    assert again.ca.certificate == first.ca.certificate


def test_trustd_ca_init_on_the_token_from_the_command_line(
    soft_token: SoftToken, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--data-dir", str(tmp_path / "hub"), "--pkcs11-module", str(soft_token.module)]
    flags += ["--pkcs11-token", soft_token.label, "--pkcs11-pin-file", str(soft_token.pin_file)]
    assert main(["ca", "init", *flags]) == 0
    assert "on token 'edgetrust'" in capsys.readouterr().out
    assert main(["ca", "init", *flags]) == 1
    assert "already holds trust material" in capsys.readouterr().err
    assert main(["ca", "init", "--if-absent", *flags]) == 0  # the chart's one-shot job, run again: kept
    assert "kept" in capsys.readouterr().out
    assert main(["bundle", "--pem", *flags]) == 0
    assert capsys.readouterr().out.startswith("-----BEGIN CERTIFICATE-----")
    assert main(["ca", "status", "--json", *flags]) == 0
    assert '"signing"' in capsys.readouterr().out
    assert main(["ca", "prepare", *flags]) == 1  # rotation on a token: refused, not half done
    assert "not there yet" in capsys.readouterr().err
