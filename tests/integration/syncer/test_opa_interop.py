"""Our bundles and OPA's are the same thing: the pinned OPA loads and verifies what we sign, refuses what was
tampered with or signed by another key, and what OPA itself builds and signs passes our verifier."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.errors import BundleSignatureError
from edgetrust.bundles.format import build_files, pack, read_repository, unpack
from edgetrust.bundles.signing import SigningKey, load_verification_keys, sign_files, verify_bundle
from localpeers.hub import free_port
from localpeers.peers import peer
from localpeers.webhook import LOOPBACK_SITE

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"


def write_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / f"{name}.key"
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def opa_with_bundle(bundle: Path, public: Path, key_id: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [str(peer("opa")), "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error"]
    argv += ["--bundle", "--verification-key", str(public), "--verification-key-id", key_id, "--signing-alg", "ES256"]
    with log.open("wb") as out:
        return subprocess.Popen([*argv, str(bundle)], stdout=out, stderr=subprocess.STDOUT), port


def wait(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once OPA serves, False when it exited (refusing the bundle)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("OPA neither served nor exited")


@pytest.fixture
def signed_bundle(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    private, public = write_keypair(tmp_path, "hub")
    files = sign_files(
        build_files(
            read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE),
            counter=3,
            commit="0123456789abcdef",
            group="gateways",
        ),
        SigningKey.from_pem("hub-1", private.read_bytes()),
    )
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(pack(files))
    return path, public, files


def test_opa_loads_and_verifies_our_signed_bundle(
    tmp_path: Path, signed_bundle: tuple[Path, Path, dict[str, bytes]]
) -> None:
    path, public, _ = signed_bundle
    process, port = opa_with_bundle(path, public, "hub-1", tmp_path / "opa.log")
    try:
        assert wait(process, port), (tmp_path / "opa.log").read_text()
        policies = httpx.get(f"http://127.0.0.1:{port}/v1/data/edgetrust/networkpolicies").json()["result"]
        assert {p["metadata"]["name"] for p in policies["edge-store"]} == {"default-deny", "allow-web"}
        review = {
            "kind": {"kind": "Pod"},
            "object": {"spec": {"containers": [{"name": "a", "securityContext": {"privileged": True}}]}},
        }
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/data/edgetrust/admission/no_privileged/violation",
            json={"input": {"review": review}},
        ).json()
        assert answer["result"] == [{"msg": "container a is privileged"}]
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("attack", ["tampered-data", "added-module", "other-key"])
def test_opa_refuses_what_we_refuse(
    tmp_path: Path, signed_bundle: tuple[Path, Path, dict[str, bytes]], attack: str
) -> None:
    _, public, files = signed_bundle
    changed = dict(files)
    if attack == "tampered-data":
        changed["edgetrust/networkpolicies/data.json"] = b'{"edge-store": []}'
    elif attack == "added-module":
        changed["edgetrust/admission/evil/evil.rego"] = b"package edgetrust.admission.evil\n\nallow := true\n"
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(pack(changed))
    _, other_public = write_keypair(tmp_path, "other")
    key = other_public if attack == "other-key" else public
    with pytest.raises(BundleSignatureError):
        verify_bundle(unpack(bad.read_bytes()), load_verification_keys({"hub-1": key.read_bytes()}))
    process, port = opa_with_bundle(bad, key, "hub-1", tmp_path / "opa.log")
    try:
        assert not wait(process, port), "OPA accepted a bundle we refuse"
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)
    assert "load error" in (tmp_path / "opa.log").read_text()


def test_a_bundle_opa_builds_and_signs_passes_our_verifier(tmp_path: Path) -> None:
    private, public = write_keypair(tmp_path, "ci")
    source = tmp_path / "src"
    (source / "edgetrust" / "admission" / "x").mkdir(parents=True)
    for module in ("no_privileged/no_privileged.rego", "lib/workloads.rego"):
        shutil.copy(REPO_POLICIES / "admission" / module, source / "edgetrust" / "admission" / "x")
    (source / "edgetrust" / "networkpolicies").mkdir(parents=True)
    (source / "edgetrust" / "networkpolicies" / "data.json").write_text(
        '{"edge-store": [], "weird": "a\u2028b", "n": 1.50}'
    )
    (source / ".manifest").write_text('{"revision": "9", "roots": ["edgetrust"], "metadata": {"counter": 9}}')
    claims = tmp_path / "claims.json"
    claims.write_text('{"keyid": "ci-1"}')
    out = tmp_path / "opa-built.tar.gz"
    built = subprocess.run(
        [
            str(peer("opa")),
            "build",
            "-b",
            str(source),
            "-o",
            str(out),
            "--signing-key",
            str(private),
            "--signing-alg",
            "ES256",
            "--claims-file",
            str(claims),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert built.returncode == 0, built.stderr
    bundle = unpack(out.read_bytes())
    assert verify_bundle(bundle, load_verification_keys({"ci-1": public.read_bytes()})) == "ci-1"
    assert bundle.counter == 9
