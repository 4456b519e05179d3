"""Attacks on image-signature verification, performed against the real webhook (TLS, uvicorn, real OPA), the real
registry (Debian's docker-registry: no referrers API, so bundles live under the referrers-tag fallback index) and
signatures written by the real cosign v2 and v3. The verdict oracle is `cosign verify` of both versions, run on
the same images with the same key.

Keyless signatures come from the private Sigstore instance of tests/support/sigstore_instance.py: Fulcio and Rekor
need an OIDC provider and a Trillian database and cannot run here, so their certificates and log entries are made
by that stand-in (and verified for real by sigstore-python in the webhook, and by cosign v3 as the oracle).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from admission.images.bundles import MAX_BUNDLES
from localpeers.opa_server import opa_server
from localpeers.peers import peer
from localpeers.registry import Registry
from localpeers.tlsca import TestCA
from localpeers.webhook import RunningWebhook, pod, policy_dir, review, running_webhook
from tests.integration.admission.conftest import attach_bundle
from tests.support.hostile_registry import HostileRegistry, running_hostile_registry
from tests.support.sigstore_instance import PrivateSigstore

pytestmark = pytest.mark.integration

SUBJECT = "release@edge.test"
ISSUER_A = "https://token-a.edge.test"
ISSUER_B = "https://token-b.edge.test"
ISSUER_C = "https://token-c.edge.test"  # not in any policy


@dataclass
class Setup:
    webhook: RunningWebhook
    root: Path  # the private instance's trusted root, as the policies ship it
    host: str


@pytest.fixture(scope="module")
def hostile(test_ca: TestCA) -> Iterator[HostileRegistry]:
    with running_hostile_registry(test_ca) as running:
        yield running


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    test_ca: TestCA,
    registry: Registry,
    cosign_keys: tuple[Path, Path],
    sigstore: PrivateSigstore,
    hostile: HostileRegistry,
) -> Iterator[Setup]:
    """A webhook (own OPA) whose policies are the ones under attack: keyed, keyless with two issuers for one
    subject, both at once for sha512-pinned images, and keyed for images on the attacker's registry."""
    work = tmp_path_factory.mktemp("signatures")
    root = sigstore.write_trusted_root(work / "trusted_root.json")
    host = registry.host
    key = {"cosign.pub": cosign_keys[1].read_bytes()}
    trusted_root = {"trusted_root.json": root.read_text()}
    two_issuers = [{"issuer": ISSUER_A, "subject": SUBJECT}, {"issuer": ISSUER_B, "subject": SUBJECT}]
    extra = {
        "keyed": {"type": "image-signature", "images": [f"{host}/sig/keyed/*"], "keys": ["cosign.pub"], "files": key},
        "keyless": {
            "type": "image-signature",
            "images": [f"{host}/sig/keyless/*"],
            "keyless": {"trustedRoot": "trusted_root.json", "identities": two_issuers},
            "files": trusted_root,
        },
        "pinned": {
            "type": "image-signature",
            "images": [f"{host}/sig/pinned/*"],
            "keys": ["cosign.pub"],
            "keyless": {"trustedRoot": "trusted_root.json", "identities": two_issuers[:1]},
            "files": {**key, **trusted_root},
        },
        "hostile": {"type": "image-signature", "images": [f"{hostile.host}/*"], "keys": ["cosign.pub"], "files": key},
    }
    with opa_server(work / "opa") as opa:
        policies = policy_dir(work / "policies", rego=False, extra=extra)
        with running_webhook(
            work / "webhook", test_ca, policy_dir=policies, opa_port=opa.port, registry_ca_file=registry.ca_file
        ) as webhook:
            yield Setup(webhook, root, host)


def _flip_signature(bundle: bytes) -> bytes:
    document = json.loads(bundle)
    signature = document["dsseEnvelope"]["signatures"][0]
    raw = bytearray(base64.b64decode(signature["sig"]))
    raw[len(raw) // 2] ^= 0x01
    signature["sig"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(document).encode()


def _keyed_variant(registry: Registry, trusted_key: Path, variant: str, workdir: Path) -> str:
    """Push a fresh image and sign it the way `variant` says; returns the digest-pinned reference."""
    repository = f"sig/keyed/{variant}"
    digest = registry.push_image(repository, "v1", content=variant.encode())
    reference = f"{registry.host}/{repository}@{digest}"
    foreign_key, _ = registry.cosign_keypair("foreign")
    if variant == "cosign2-legacy":
        registry.cosign_sign(reference, trusted_key)
    elif variant == "cosign2-legacy-foreign-key":
        registry.cosign_sign(reference, foreign_key)
    elif variant == "cosign3-bundle":
        registry.cosign3_sign(reference, trusted_key)
    elif variant == "cosign3-legacy":
        registry.cosign3_sign(reference, trusted_key, new_bundle_format=False)
    elif variant == "cosign3-bundle-foreign-key":
        registry.cosign3_sign(reference, foreign_key)
    elif variant == "cosign3-bundle-tampered":
        bundle = workdir / f"{variant}.sigstore.json"
        registry.cosign3_sign(reference, trusted_key, upload=False, bundle=bundle)
        registry.attach_with_referrers_tag(repository, digest, _flip_signature(bundle.read_bytes()))
    elif variant == "cosign3-bundle-of-another-image":
        other = registry.push_image(repository, "other", content=b"the image that was really signed")
        bundle = workdir / f"{variant}.sigstore.json"
        registry.cosign3_sign(f"{registry.host}/{repository}@{other}", trusted_key, upload=False, bundle=bundle)
        registry.attach_with_referrers_tag(repository, digest, bundle.read_bytes())
    else:
        raise AssertionError(variant)
    return reference


KEYED_VARIANTS = {
    "cosign2-legacy": True,
    "cosign3-bundle": True,  # cosign v3's default format: the one that used to be refused
    "cosign3-legacy": True,
    "cosign2-legacy-foreign-key": False,
    "cosign3-bundle-foreign-key": False,
    "cosign3-bundle-tampered": False,
    "cosign3-bundle-of-another-image": False,
}


@pytest.mark.parametrize("variant", list(KEYED_VARIANTS))
def test_cosign_v3_default_bundle_signature_is_admitted_exactly_when_cosign_verify_accepts_it(
    setup: Setup, registry: Registry, cosign_keys: tuple[Path, Path], tmp_path: Path, variant: str
) -> None:
    key, public = cosign_keys
    reference = _keyed_variant(registry, key, variant, tmp_path)
    v3 = registry.cosign_verify(reference, public, peer_name="cosign3")
    # cosign v2 reads either layout, one per invocation: bundles only with --new-bundle-format, and then it
    # insists on a trusted root (any will do for a key) and no longer looks at `.sig`.
    v2_legacy = registry.cosign_verify(reference, public)
    v2_bundle = registry.cosign_verify(
        reference, public, extra=["--new-bundle-format", "--trusted-root", str(setup.root)]
    )
    answer = setup.webhook.review(review(pod(reference, name=variant)))
    expected = KEYED_VARIANTS[variant]
    assert (v3.returncode == 0) is expected, v3.stderr
    assert (v2_legacy.returncode == 0 or v2_bundle.returncode == 0) is expected, v2_legacy.stderr + v2_bundle.stderr
    assert answer["allowed"] is expected, answer
    if not expected:
        assert answer["status"]["code"] == 403
        assert "[keyed]" in answer["status"]["message"]
    # Nothing was changed by the verdict: the image still verifies (or not) the same way afterwards.
    assert (registry.cosign_verify(reference, public, peer_name="cosign3").returncode == 0) is expected


def test_sha512_pinned_image_with_stripped_message_digest_is_refused_not_500(
    setup: Setup, registry: Registry, sigstore: PrivateSigstore
) -> None:
    """A sha512 pin and a bundle without its optional messageDigest used to make cryptography raise ValueError
    (a 64-byte digest for SHA-256), which the API server saw as HTTP 500. Now: a clean denial, and a properly
    signed sha512 pin (an in-toto statement naming the sha512 digest) is admitted by the same webhook."""
    repository = "sig/pinned/app"
    stripped = "sha512:" + hashlib.sha512(b"an image pinned by sha512").hexdigest()
    bundle = sigstore.sign_digest(stripped, SUBJECT, ISSUER_A, message_digest=False)
    registry.attach_with_referrers_tag(repository, stripped, bundle)
    index_before = registry.get_manifest(repository, "sha512-" + stripped.split(":")[1][:64])
    assert index_before is not None

    answer = setup.webhook.review(review(pod(f"{registry.host}/{repository}@{stripped}", name="stripped")))
    assert answer["allowed"] is False, answer
    assert answer["status"]["code"] == 403  # a refusal, not an internal error
    assert "[pinned]" in answer["status"]["message"]
    assert "message signature cannot sign" in answer["status"]["message"]

    statement_signed = "sha512:" + hashlib.sha512(b"another image pinned by sha512").hexdigest()
    good = sigstore.sign_digest(statement_signed, SUBJECT, ISSUER_A, dsse=True)
    registry.attach_with_referrers_tag(repository, statement_signed, good)
    admitted = setup.webhook.review(review(pod(f"{registry.host}/{repository}@{statement_signed}", name="good")))
    assert admitted["allowed"] is True, admitted
    # The same statement presented for another sha512 digest does not carry over.
    copied = "sha512:" + hashlib.sha512(b"a third image").hexdigest()
    registry.attach_with_referrers_tag(repository, copied, good)
    refused = setup.webhook.review(review(pod(f"{registry.host}/{repository}@{copied}", name="copied")))
    assert refused["allowed"] is False
    assert "does not name" in refused["status"]["message"]
    # The attack changed nothing in the registry: the stripped bundle's index is as it was.
    assert registry.get_manifest(repository, "sha512-" + stripped.split(":")[1][:64]) == index_before


def test_bundle_from_an_issuer_outside_the_policy_is_refused_and_the_recorded_signer_is_the_real_issuer(
    setup: Setup, registry: Registry, sigstore: PrivateSigstore, caplog: pytest.LogCaptureFixture
) -> None:
    """The policy trusts SUBJECT from issuers A and B. A bundle whose certificate says issuer C is refused; one
    from issuer B is admitted and recorded (log and verdict cache) as B's, not as the first identity (A) whose
    subject matched."""
    caplog.set_level(logging.INFO, logger="admission.images.verifier")
    host = registry.host
    outsider = registry.push_image("sig/keyless/outsider", "v1", content=b"issuer C")
    bundle = sigstore.sign_digest(outsider, SUBJECT, ISSUER_C, dsse=True)
    attach_bundle(registry, f"{host}/sig/keyless/outsider@{outsider}", bundle, registry.workdir / "b" / "outsider")
    refused = setup.webhook.review(review(pod(f"{host}/sig/keyless/outsider:v1", name="outsider")))
    assert refused["allowed"] is False, refused
    assert "[keyless]" in refused["status"]["message"]
    assert "Sigstore bundle rejected" in refused["status"]["message"]

    signed = registry.push_image("sig/keyless/by-b", "v1", content=b"issuer B")
    bundle = sigstore.sign_digest(signed, SUBJECT, ISSUER_B, dsse=True)
    attach_bundle(registry, f"{host}/sig/keyless/by-b@{signed}", bundle, registry.workdir / "b" / "by-b")
    assert setup.webhook.review(review(pod(f"{host}/sig/keyless/by-b:v1", name="by-b")))["allowed"] is True
    recorded = [r.getMessage() for r in caplog.records if r.name.startswith("admission") and signed in r.getMessage()]
    assert recorded == [
        f"verified {host}/sig/keyless/by-b@{signed} under policy keyless: signed by {SUBJECT} ({ISSUER_B})"
    ]
    # Answered from the verdict cache the second time: still admitted, and nothing new recorded.
    assert setup.webhook.review(review(pod(f"{host}/sig/keyless/by-b:v1", name="by-b")))["allowed"] is True
    assert [
        r.getMessage() for r in caplog.records if r.name.startswith("admission") and signed in r.getMessage()
    ] == recorded
    # cosign v2 and v3, the oracles, agree: B's bundle verifies for B and not for A; C's for neither.
    by_b, by_c = f"{host}/sig/keyless/by-b@{signed}", f"{host}/sig/keyless/outsider@{outsider}"
    for peer_name in ("cosign3", "cosign"):
        assert registry.cosign_verify_keyless(by_b, setup.root, SUBJECT, ISSUER_B, peer_name=peer_name).returncode == 0
        assert registry.cosign_verify_keyless(by_b, setup.root, SUBJECT, ISSUER_A, peer_name=peer_name).returncode != 0
        for issuer in (ISSUER_A, ISSUER_B):
            oracle = registry.cosign_verify_keyless(by_c, setup.root, SUBJECT, issuer, peer_name=peer_name)
            assert oracle.returncode != 0, oracle.stdout


def _legacy_keyless_variant(
    registry: Registry, sigstore: PrivateSigstore, variant: str, workdir: Path, issuer: str
) -> str:
    """cosign v2 `sign --certificate` with a Fulcio-like leaf for a cosign key writes the legacy keyless `.sig`
    layout; the stand-in Rekor's answer is then added as the `dev.sigstore.cosign/bundle` annotation, which is
    where cosign puts Rekor's answer when a real Rekor is there."""
    repository = f"sig/keyless/{variant}"
    digest = registry.push_image(repository, "v1", content=variant.encode())
    reference = f"{registry.host}/{repository}@{digest}"
    key, public = registry.cosign_keypair(f"legacy-{variant}")
    authority = PrivateSigstore.create() if variant == "cosign2-keyless-foreign-fulcio-and-rekor" else sigstore
    cosign_public = load_pem_public_key(public.read_bytes())
    assert isinstance(cosign_public, ec.EllipticCurvePublicKey)  # cosign generate-key-pair makes P-256 keys
    leaf = workdir / "leaf.pem"
    leaf.write_bytes(authority.certificate_for(cosign_public, SUBJECT, issuer))
    chain = workdir / "chain.pem"
    chain.write_bytes(authority.ca_pem())
    registry.run(
        peer("cosign"),
        "sign",
        "--yes",
        "--key",
        str(key),
        "--certificate",
        str(leaf),
        "--certificate-chain",
        str(chain),
        "--tlog-upload=false",
        reference,
        cwd=registry.workdir,
    )
    if variant == "cosign2-keyless-without-rekor":
        return reference
    tag = digest.replace(":", "-") + ".sig"
    manifest = json.loads(registry.get_manifest(repository, tag) or b"{}")
    layer = manifest["layers"][0]
    payload = registry.blob(repository, layer["digest"])
    if variant == "cosign2-keyless-rekor-entry-for-another-payload":
        payload = payload.replace(b"docker-reference", b"docker-referencf")
    annotations = layer["annotations"]
    annotations["dev.sigstore.cosign/bundle"] = authority.rekor_bundle_annotation(
        payload,
        annotations["dev.cosignproject.cosign/signature"],
        annotations["dev.sigstore.cosign/certificate"].encode(),
    )
    answer = registry.put_manifest(repository, tag, json.dumps(manifest).encode(), manifest["mediaType"])
    assert answer.status_code == 201, answer.text
    return reference


LEGACY_KEYLESS_VARIANTS = {  # issuer in the certificate, admitted?, why not
    "cosign2-keyless": (ISSUER_B, True, ""),
    "cosign2-keyless-issuer-outside-the-policy": (ISSUER_C, False, "matches none of the policy's identities"),
    "cosign2-keyless-without-rekor": (ISSUER_B, False, "no Rekor entry"),
    "cosign2-keyless-rekor-entry-for-another-payload": (ISSUER_B, False, "Rekor entry is for another payload"),
    "cosign2-keyless-foreign-fulcio-and-rekor": (ISSUER_B, False, "keyless .sig signature rejected"),
}


@pytest.mark.parametrize("variant", list(LEGACY_KEYLESS_VARIANTS))
def test_cosign_v2_keyless_sig_layout_is_admitted_exactly_when_cosign_verify_accepts_it(
    setup: Setup, registry: Registry, sigstore: PrivateSigstore, tmp_path: Path, variant: str
) -> None:
    """cosign v2's default keyless output (certificate and Rekor answer as `.sig` annotations) used to be ignored
    by the keyless policy path ("no Sigstore bundle attached"); it is verified now, against the same trust root."""
    issuer, expected, reason = LEGACY_KEYLESS_VARIANTS[variant]
    reference = _legacy_keyless_variant(registry, sigstore, variant, tmp_path, issuer)
    trust = {
        "ca.pem": sigstore.ca_pem(),
        "rekor.pub": sigstore.public_pem("rekor"),
        "ct.pub": sigstore.public_pem("ct"),
    }
    for name, content in trust.items():
        (tmp_path / name).write_bytes(content)
    legacy_env = {
        "SIGSTORE_ROOT_FILE": str(tmp_path / "ca.pem"),
        "SIGSTORE_REKOR_PUBLIC_KEY": str(tmp_path / "rekor.pub"),
        "SIGSTORE_CT_LOG_PUBLIC_KEY_FILE": str(tmp_path / "ct.pub"),
    }
    v3 = registry.cosign_verify_keyless(reference, setup.root, SUBJECT, ISSUER_B)
    v2 = registry.cosign_verify_keyless(
        reference, setup.root, SUBJECT, ISSUER_B, peer_name="cosign", legacy_env=legacy_env
    )
    answer = setup.webhook.review(review(pod(reference, name="legacy")))
    assert (v3.returncode == 0) is expected, v3.stderr
    assert (v2.returncode == 0) is expected, v2.stderr
    assert answer["allowed"] is expected, answer
    if not expected:
        assert answer["status"]["code"] == 403
        assert "[keyless]" in answer["status"]["message"]
        assert reason in answer["status"]["message"]


def test_image_with_more_bundles_than_the_limit_is_refused_not_read_in_part(
    setup: Setup, registry: Registry, cosign_keys: tuple[Path, Path]
) -> None:
    """A limit refuses: an image whose referrers index lists more bundles than MAX_BUNDLES is refused with the
    reason, although its first bundle is a good cosign v3 signature (cosign v3 itself accepts it); at the limit
    the same layout is admitted. Nothing is admitted or refused on a partial read."""
    key, public = cosign_keys

    def flooded(name: str, junk: int) -> str:
        repository = f"sig/keyed/{name}"
        digest = registry.push_image(repository, "v1", content=name.encode())
        reference = f"{registry.host}/{repository}@{digest}"
        registry.cosign3_sign(reference, key)
        for n in range(junk):
            bundle = json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "n": n}).encode()
            registry.attach_with_referrers_tag(repository, digest, bundle)
        assert registry.cosign_verify(reference, public, peer_name="cosign3").returncode == 0
        return reference

    at_limit = flooded("at-limit", MAX_BUNDLES - 1)
    assert setup.webhook.review(review(pod(at_limit, name="at-limit")))["allowed"] is True
    over = flooded("over-limit", MAX_BUNDLES)
    answer = setup.webhook.review(review(pod(over, name="over-limit")))
    assert answer["allowed"] is False, answer
    assert answer["status"]["code"] == 403
    assert f"{MAX_BUNDLES + 1} bundles attached, over the limit of {MAX_BUNDLES}" in answer["status"]["message"]


@pytest.mark.parametrize(
    ("repository", "reason"),
    [
        ("loop", "TooManyRedirects"),
        ("bad-encoding", "sent Content-Encoding 'gzip' when asked for identity; refused"),
        ("huge-token", "over the 65536-byte limit"),
        ("bad-token", "not printable ASCII"),
    ],
)
def test_hostile_registry_redirect_loop_bad_encoding_and_token_abuse_get_a_refusal_not_a_500(
    setup: Setup, hostile: HostileRegistry, registry: Registry, repository: str, reason: str
) -> None:
    """httpx errors that are not transport errors (a redirect loop, a Content-Encoding that does not decode)
    used to escape the registry client and the webhook answered 500; a token service's answer was read
    unbounded. Each is now the registry's fault in a clean refusal, and the webhook keeps deciding. (The shared
    client asks for identity and refuses an encoded answer before decoding anything: a digest is over the bytes
    as stored.)"""
    answer = setup.webhook.review(review(pod(f"{hostile.host}/{repository}/app:v1", name=repository)))
    assert answer["allowed"] is False, answer
    assert answer["status"]["code"] == 403
    assert "[hostile]" in answer["status"]["message"]
    assert reason in answer["status"]["message"]
    # still deciding, and still right, for the good registry
    good = registry.push_image("sig/keyed/after-hostile", "v1", content=b"after the hostile registry")
    assert setup.webhook.review(review(pod(f"{registry.host}/sig/keyed/after-hostile@{good}")))["allowed"] is False
