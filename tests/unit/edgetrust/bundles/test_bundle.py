"""Bundles: build, pack, strict unpack, OPA-format signatures, rollback guard; every bad input named."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.errors import (
    BundleBuildError,
    BundleError,
    BundleFormatError,
    BundleSignatureError,
    RollbackError,
)
from edgetrust.bundles.format import MANIFEST, SIGNATURES, Bundle, build_files, pack, read_repository, unpack
from edgetrust.bundles.signing import SigningKey, file_hash, load_verification_keys, sign_files, verify_bundle
from localpeers.webhook import LOOPBACK_SITE
from syncer.revisions import RevisionGuard
from tests.support.jws import hs256_forgery

REPO_POLICIES = Path(__file__).resolve().parents[4] / "policies"


def keypair(key_id: str = "hub-1") -> tuple[SigningKey, dict[str, ec.EllipticCurvePublicKey]]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey.from_pem(key_id, pem), load_verification_keys({key_id: public})


def signed(
    counter: int = 1, key: SigningKey | None = None
) -> tuple[dict[str, bytes], dict[str, ec.EllipticCurvePublicKey]]:
    signing, verification = keypair() if key is None else (key, {})
    return sign_files(
        build_files(
            read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=counter, commit="c0ffee", group="gateways"
        ),
        signing,
    ), verification


def tar_of(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, content in entries:
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue())


def test_repository_becomes_a_reproducible_bundle() -> None:
    files, keys = signed()
    first, second = pack(files), pack(dict(reversed(list(files.items()))))
    assert first == second
    bundle = unpack(first)
    assert bundle.revision == "000000000001-c0ffee"
    assert bundle.counter == 1
    assert set(bundle.network_policies) == {"edge-gateway", "edge-store"}
    assert [p["metadata"]["name"] for p in bundle.network_policies["edge-gateway"]] == [
        "allow-dns",
        "allow-hub",
        "default-deny",
    ]
    assert "edgetrust/admission/no_privileged/no_privileged.rego" in bundle.files
    assert not any(name.endswith("_test.rego") for name in bundle.files)
    assert verify_bundle(bundle, keys) == "hub-1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d["spec"].update(podSelector=None), "spec.podSelector: required"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "metadata.name: 'Bad_Name' is not a DNS-1123 subdomain"),
        (lambda d: d["metadata"].pop("namespace"), "metadata.namespace"),
        (lambda d: d["spec"]["egress"][0]["ports"][0].update(protocol="ICMP"), r"spec.egress\[0\].ports\[0\].protocol"),
        (lambda d: d["spec"]["egress"][0]["ports"][0].update(port=70000), r"ports\[0\].port: 70000"),
        (lambda d: d["spec"].update(policyTypes=["Sideways"]), "spec.policyTypes"),
        (lambda d: d["spec"].update(extra=1), "unknown fields"),
        (lambda d: d.update(kind="Pod"), "expected networking.k8s.io/v1 NetworkPolicy"),
    ],
)
def test_invalid_network_policy_fails_the_build_naming_file_and_field(
    tmp_path: Path, change: object, reason: str
) -> None:
    shutil.copytree(REPO_POLICIES / "networkpolicies", tmp_path / "networkpolicies")
    path = tmp_path / "networkpolicies" / "edge-gateway" / "allow-dns.yaml"
    document = yaml.safe_load(path.read_text())
    change(document)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(BundleBuildError, match=reason) as raised:
        read_repository(tmp_path)
    assert "allow-dns.yaml" in str(raised.value)


def test_ip_block_except_must_be_inside(tmp_path: Path) -> None:
    shutil.copytree(REPO_POLICIES / "networkpolicies", tmp_path / "networkpolicies")
    path = tmp_path / "networkpolicies" / "edge-gateway" / "allow-hub.yaml"
    path.write_text(path.read_text().replace("10.96.0.0/12", "192.168.0.0/16"))
    with pytest.raises(BundleBuildError, match=r"except\[0\]: 192.168.0.0/16 is not inside 10.0.0.0/8"):
        read_repository(tmp_path)


def test_unsigned_wrong_key_and_tampered_bundles_are_refused() -> None:
    files, keys = signed()
    unsigned = {k: v for k, v in files.items() if k != SIGNATURES}
    with pytest.raises(BundleSignatureError, match="not signed"):
        verify_bundle(unpack(pack(unsigned)), keys)
    _, other_keys = keypair("hub-1")
    with pytest.raises(BundleSignatureError, match="does not verify under key 'hub-1'"):
        verify_bundle(unpack(pack(files)), other_keys)
    with pytest.raises(BundleSignatureError, match="key 'hub-1', which is not trusted"):
        verify_bundle(unpack(pack(files)), {})
    tampered = dict(files)
    tampered["edgetrust/networkpolicies/data.json"] = b'{"edge-gateway": []}'
    with pytest.raises(BundleSignatureError, match=r"networkpolicies/data\.json does not match its signed hash"):
        verify_bundle(unpack(pack(tampered)), keys)
    extra = {**files, "edgetrust/admission/evil.rego": b"package edgetrust.admission.evil\n"}
    with pytest.raises(BundleSignatureError, match="in the bundle but not signed"):
        verify_bundle(unpack(pack(extra)), keys)
    missing = {k: v for k, v in files.items() if not k.endswith("no_privileged.rego")}
    with pytest.raises(BundleSignatureError, match="signed but not in the bundle"):
        verify_bundle(unpack(pack(missing)), keys)


def test_structured_files_hash_independently_of_whitespace() -> None:
    assert file_hash("a/data.json", b'{"b": 1, "a": [1.5, "x"]}') == file_hash("a/data.json", b'{"a":[1.5,"x"],"b":1}')
    assert file_hash("a/data.json", b'{"a": 1}') != file_hash("a/data.json", b'{"a": 2}')
    assert file_hash("p.rego", b"package a\n") != file_hash("p.rego", b"package a \n")


def test_unsigned_algorithm_none_is_refused() -> None:
    files, keys = signed()
    token = jwt.encode({"files": []}, key=None, algorithm="none", headers={"kid": "hub-1"})
    forged = {**files, SIGNATURES: json.dumps({"signatures": [token]}).encode()}
    with pytest.raises(BundleSignatureError, match="only ES256 is accepted"):
        verify_bundle(unpack(pack(forged)), keys)


def test_forged_jws_headers_are_refused_before_any_key_is_tried() -> None:
    files, keys = signed()
    signing, _ = keypair()
    token = json.loads(files[SIGNATURES])["signatures"][0]
    payload = jwt.api_jws.PyJWS().decode_complete(token, options={"verify_signature": False})["payload"]

    def forged(new_token: str) -> Bundle:
        return unpack(pack({**files, SIGNATURES: json.dumps({"signatures": [new_token]}).encode()}))

    critical = jwt.api_jws.PyJWS().encode(
        payload, signing.private_key, algorithm="ES256", headers={"kid": "hub-1", "crit": ["exp"], "exp": 1}
    )
    with pytest.raises(BundleSignatureError, match="critical header parameters"):
        verify_bundle(forged(critical), keys)
    public_pem = next(iter(keys.values())).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hmac = hs256_forgery(payload, public_pem, "hub-1")
    with pytest.raises(BundleSignatureError, match="only ES256 is accepted"):
        verify_bundle(forged(hmac), keys)
    head, body, signature = token.split(".")
    with pytest.raises(BundleSignatureError, match="does not verify under key 'hub-1'"):
        verify_bundle(forged(f"{head}.{body}.{signature[:-4]}AAAA"), keys)
    with pytest.raises(BundleSignatureError, match="not a JWT"):
        verify_bundle(forged(f"{head}.{body}!.{signature}"), keys)
    # OPA's fallback: no kid in the header, the key named by the (deprecated) keyid claim
    claims = {**json.loads(payload), "keyid": "hub-1"}
    keyid_only = jwt.encode(claims, signing.private_key, algorithm="ES256")
    with pytest.raises(BundleSignatureError, match="does not verify under key 'hub-1'"):
        verify_bundle(forged(keyid_only), keys)  # named, but signed by another key than hub-1's
    own_key, own_keys = keypair()
    assert verify_bundle(forged(jwt.encode(claims, own_key.private_key, algorithm="ES256")), own_keys) == "hub-1"


def test_truncated_and_hostile_archives_are_refused() -> None:
    files, _ = signed()
    blob = pack(files)
    with pytest.raises(BundleFormatError, match=r"not a readable tar\.gz|truncated"):
        unpack(blob[: len(blob) // 2])
    with pytest.raises(BundleFormatError, match=r"not a readable tar\.gz"):
        unpack(b"definitely not gzip")
    with pytest.raises(BundleFormatError, match="escapes the bundle"):
        unpack(tar_of([(tarfile.TarInfo("../../etc/cron.d/evil"), b"x"), (tarfile.TarInfo(MANIFEST), b"{}")]))
    link = tarfile.TarInfo("edgetrust/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/shadow"
    with pytest.raises(BundleFormatError, match="not a regular file"):
        unpack(tar_of([(link, b"")]))
    with pytest.raises(BundleFormatError, match="twice"):
        unpack(tar_of([(tarfile.TarInfo("/a.rego"), b"1"), (tarfile.TarInfo("a.rego"), b"2")]))
    with pytest.raises(BundleFormatError, match=r"no \.manifest"):
        unpack(tar_of([(tarfile.TarInfo("a.rego"), b"1")]))
    with pytest.raises(BundleFormatError, match="over the"):
        unpack(b"\0" * (9 * 1024 * 1024))
    bomb = gzip.compress(b"\0" * (65 * 1024 * 1024))
    with pytest.raises(BundleFormatError, match="unpacks to over"):
        unpack(bomb)


def test_rollback_guard_refuses_older_and_equal_revisions_across_restarts(tmp_path: Path) -> None:
    guard = RevisionGuard(tmp_path / "applied.json")
    newer = unpack(pack(signed(counter=5)[0]))
    older = unpack(pack(signed(counter=4)[0]))
    guard.advance(newer)
    restarted = RevisionGuard(tmp_path / "applied.json")
    assert restarted.highest == 5
    for stale in (older, newer):
        with pytest.raises(RollbackError, match="not newer than the applied counter 5"):
            restarted.check(stale)
    (tmp_path / "applied.json").write_text("garbage")
    with pytest.raises(BundleError, match="unreadable"):
        _ = restarted.highest


def test_manifest_counter_must_be_an_integer() -> None:
    bundle = Bundle({MANIFEST: json.dumps({"revision": "x", "metadata": {"counter": "7"}}).encode()})
    with pytest.raises(BundleFormatError, match="counter must be a non-negative integer"):
        _ = bundle.counter
