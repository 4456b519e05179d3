"""Attacks on the hub's trust material: a replica that finds none must refuse rather than mint a root of its own
(its SVIDs would be trusted by nobody else, or, worse, by whoever took its bundle); keys on the token must never
reach a file in the clear; a wrong PIN must fail closed, at start, with a sentence that says what to fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pkcs11
import pkcs11.exceptions
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from localpeers.hub import golden_reference_values, running_hub
from localpeers.softhsm import SoftToken
from trustd.errors import CAConfigError
from trustd.server.ca import material
from trustd.server.ca import pkcs11 as token_keys
from trustd.server.hub import build_hub
from trustd.server.settings import TrustdSettings

TRUSTD = str(Path(sys.executable).parent / "trustd")
KEY_FILES = ("ca.key", "jwt.key", "signing.key")


def _serve_argv(tmp_path: Path, ek_roots: Path, *extra: str) -> list[str]:
    refvalues = tmp_path / "reference-values.yaml"
    refvalues.write_text(yaml.safe_dump(golden_reference_values()))
    argv = [TRUSTD, "serve", "--data-dir", str(tmp_path / "hub"), "--ek-roots", str(ek_roots)]
    return [*argv, "--reference-values", str(refvalues), "--port", "0", *extra]


def _token_flags(token: SoftToken, pin_file: Path | None = None) -> list[str]:
    return [
        "--pkcs11-module", str(token.module), "--pkcs11-token", token.label,
        "--pkcs11-pin-file", str(pin_file or token.pin_file),
    ]  # fmt: skip


def _settings(tmp_path: Path, ek_roots: Path, token: SoftToken | None = None, **more: object) -> TrustdSettings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    refvalues = tmp_path / "reference-values.yaml"
    refvalues.write_text(yaml.safe_dump(golden_reference_values()))
    fields: dict[str, object] = {"data_dir": tmp_path / "hub", "ek_roots_dir": ek_roots, "reference_values": refvalues}
    fields.update(token.settings() if token else {})
    fields.update(more)
    return TrustdSettings(**fields)  # type: ignore[arg-type]


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_a_replica_without_trust_material_refuses_to_start_and_mints_nothing(tmp_path: Path, ek_roots: Path) -> None:
    done = subprocess.run(_serve_argv(tmp_path, ek_roots), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "no trust material" in done.stderr
    assert "trustd ca init" in done.stderr
    names = {p.name for p in _files_under(tmp_path / "hub")} if (tmp_path / "hub").exists() else set()
    assert not names & {*KEY_FILES, "ca.crt"}, names  # no root was minted on the side


def test_a_replica_with_half_the_trust_material_refuses_too(tmp_path: Path, ek_roots: Path) -> None:
    settings = _settings(tmp_path, ek_roots)
    material.init(settings)
    (settings.revocations_dir / "signing.key").unlink()  # the CA is there, the revocation key is not
    with pytest.raises(CAConfigError, match="no trust material"):
        build_hub(settings)
    assert not (settings.revocations_dir / "signing.key").exists()  # not made up either


def test_a_replica_on_an_empty_token_refuses_and_leaves_the_token_empty(
    soft_token: SoftToken, tmp_path: Path, ek_roots: Path
) -> None:
    with pytest.raises(CAConfigError, match=r"holds no trust material .*trustd ca init"):
        build_hub(_settings(tmp_path, ek_roots, soft_token))
    token = token_keys.Token(token_keys.TokenConfig(soft_token.module, soft_token.label, soft_token.pin))
    try:
        assert not any(token.has_key(label) for label in (token_keys.CA_LABEL, token_keys.JWT_LABEL))
        assert token.certificate(token_keys.CA_LABEL) is None
    finally:
        token.close()


def test_keys_on_the_token_never_reach_a_file_in_the_clear(
    soft_token: SoftToken, tmp_path: Path, ek_roots: Path
) -> None:
    settings = _settings(tmp_path, ek_roots, soft_token)
    material.init(settings)
    with running_hub(
        tmp_path,
        ek_roots=ek_roots,
        pkcs11_module=soft_token.module,
        pkcs11_token=soft_token.label,
        pkcs11_pin_file=soft_token.pin_file,
    ) as hub:
        trust = hub.hub.trust
        assert trust is not None
        assert trust.token is not None
        ours = {
            k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            for k in (hub.hub.ca._key, hub.hub.ca._jwt_key, trust.revocation_key.private_key)
        }
        with pytest.raises(CAConfigError, match="not extractable"):
            trust.revocation_key.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        # the token itself refuses to hand the private value out, whoever asks
        for label in (token_keys.CA_LABEL, token_keys.JWT_LABEL, token_keys.REVOCATIONS_LABEL):
            with trust.token._op("inspecting") as session:
                private = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
                assert private[pkcs11.Attribute.SENSITIVE]
                assert not private[pkcs11.Attribute.EXTRACTABLE]
                with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                    private[pkcs11.Attribute.VALUE]
    everything = [p for p in _files_under(tmp_path) if "softhsm" not in p.parts]
    assert not {p.name for p in everything} & set(KEY_FILES)
    for path in everything:
        data = path.read_bytes()
        if b"PRIVATE KEY-----" not in data:
            continue
        key = serialization.load_pem_private_key(data, password=None)  # the hub's own TLS key, made per start
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert public not in ours, f"{path} holds one of the token's keys in the clear"


def test_a_wrong_pin_fails_closed_with_a_clear_error(soft_token: SoftToken, tmp_path: Path, ek_roots: Path) -> None:
    material.init(_settings(tmp_path / "init", ek_roots, soft_token))
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("0000" if soft_token.pin != "0000" else "1111")
    wrong.chmod(0o600)
    done = subprocess.run(
        _serve_argv(tmp_path, ek_roots, *_token_flags(soft_token, wrong)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **soft_token.environ()},
    )
    assert done.returncode == 1, done.stderr
    assert "refused the PIN" in done.stderr
    assert "--pkcs11-pin-file" in done.stderr
    assert soft_token.pin not in done.stderr  # the PINs are never printed
    assert wrong.read_text() not in done.stderr
    assert not (tmp_path / "hub" / "tls").exists()  # it stopped before it served or signed anything
    with pytest.raises(CAConfigError, match="refused the PIN"):
        material.init(_settings(tmp_path / "again", ek_roots, soft_token, pkcs11_pin_file=wrong))


def test_a_wrong_pin_is_refused_even_while_the_token_is_logged_in_here(
    soft_token: SoftToken, tmp_path: Path, ek_roots: Path
) -> None:
    """PKCS#11 logs in the process, not the session: a second opener must still give the PIN."""
    material.init(_settings(tmp_path, ek_roots, soft_token))
    held = material.load(_settings(tmp_path, ek_roots, soft_token))
    try:
        with pytest.raises(CAConfigError, match="refused the PIN"):
            token_keys.Token(token_keys.TokenConfig(soft_token.module, soft_token.label, "not-the-pin"))
    finally:
        held.close()


def test_a_pin_file_others_can_read_is_refused(soft_token: SoftToken, tmp_path: Path, ek_roots: Path) -> None:
    soft_token.pin_file.chmod(0o644)
    with pytest.raises(CAConfigError, match="readable by others"):
        material.init(_settings(tmp_path, ek_roots, soft_token))
    soft_token.pin_file.chmod(0o600)
    with pytest.raises(CAConfigError, match="holds no trust material"):  # nothing was made while it was refused
        material.load(_settings(tmp_path, ek_roots, soft_token))
