"""Real peers for the admission plane: OPA (pinned build), a TLS distribution registry filled by oras and
signed by cosign, and the webhook itself over TLS. The Sigstore keyless path uses a private Sigstore instance
(tests/support/sigstore_instance.py) because Fulcio and Rekor cannot run here; sigstore-python verifies it for real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localpeers.opa_server import OpaServer, opa_server
from localpeers.registry import Registry, running_registry
from localpeers.tlsca import TestCA
from localpeers.webhook import RunningWebhook, policy_dir, running_webhook
from tests.support.sigstore_instance import BUNDLE_MEDIA_TYPE, PrivateSigstore

KEYLESS_ISSUER = "https://token.edge.test"
KEYLESS_IDENTITY = "release@edge.test"


DRYRUN_REGO = """package edgetrust.admission.no_debug_pods

import rego.v1

violation contains {"msg": "debug pods are not for production"} if {
	input.review.object.metadata.annotations["edgetrust.io/debug"] == "true"
}
"""


@dataclass
class Images:
    signed: str  # repo:tag, cosign-signed with the trusted key
    signed_digest: str
    unsigned: str
    wrong_key: str  # signed, but by a key the policy does not trust
    keyless: str  # Sigstore bundle attached as an OCI referrer
    keyless_other_identity: str


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    """The session webhook's sidecar. A webhook owns its OPA's policies and data: tests that start another
    webhook start another OPA."""
    with opa_server(tmp_path_factory.mktemp("opa")) as server:
        yield server


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry"), test_ca) as running:
        yield running


@pytest.fixture(scope="session")
def sigstore() -> PrivateSigstore:
    return PrivateSigstore.create()


@pytest.fixture(scope="session")
def cosign_keys(registry: Registry) -> tuple[Path, Path]:
    return registry.cosign_keypair("trusted")


def attach_bundle(registry: Registry, reference: str, bundle: bytes, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "bundle.sigstore.json"
    path.write_bytes(bundle)
    registry.oras_attach(reference, BUNDLE_MEDIA_TYPE, path, BUNDLE_MEDIA_TYPE)


@pytest.fixture(scope="session")
def images(registry: Registry, cosign_keys: tuple[Path, Path], sigstore: PrivateSigstore) -> Images:
    host = registry.host
    key, _ = cosign_keys
    signed_digest = registry.push_image("edgetrust/signed", "v1", content=b"signed")
    registry.cosign_sign(f"{host}/edgetrust/signed@{signed_digest}", key)
    registry.push_image("edgetrust/unsigned", "v1", content=b"unsigned")
    other_key, _ = registry.cosign_keypair("untrusted")
    wrong = registry.push_image("edgetrust/wrongkey", "v1", content=b"wrong key")
    registry.cosign_sign(f"{host}/edgetrust/wrongkey@{wrong}", other_key)
    keyless = registry.push_image("edgetrust/keyless", "v1", content=b"keyless")
    bundle = sigstore.sign_digest(keyless, KEYLESS_IDENTITY, KEYLESS_ISSUER, dsse=True)
    attach_bundle(registry, f"{host}/edgetrust/keyless@{keyless}", bundle, registry.workdir / "bundles" / "keyless")
    stranger = registry.push_image("edgetrust/stranger", "v1", content=b"someone else")
    bundle = sigstore.sign_digest(stranger, "intruder@edge.test", KEYLESS_ISSUER)
    attach_bundle(registry, f"{host}/edgetrust/stranger@{stranger}", bundle, registry.workdir / "bundles" / "stranger")
    return Images(
        signed=f"{host}/edgetrust/signed:v1",
        signed_digest=signed_digest,
        unsigned=f"{host}/edgetrust/unsigned:v1",
        wrong_key=f"{host}/edgetrust/wrongkey:v1",
        keyless=f"{host}/edgetrust/keyless:v1",
        keyless_other_identity=f"{host}/edgetrust/stranger:v1",
    )


def signature_policy(
    registry: Registry, cosign_keys: tuple[Path, Path], sigstore: PrivateSigstore, **overrides: object
) -> dict[str, object]:
    root = sigstore.trusted_root()
    policy: dict[str, object] = {
        "type": "image-signature",
        "mode": "enforce",
        "failure": "closed",
        "images": [f"{registry.host}/edgetrust/*"],
        "keys": ["cosign.pub"],
        "keyless": {
            "trustedRoot": "trusted_root.json",
            "identities": [{"issuer": KEYLESS_ISSUER, "subject": KEYLESS_IDENTITY}],
        },
        "files": {"cosign.pub": cosign_keys[1].read_bytes(), "trusted_root.json": json.dumps(root)},
    }
    policy.update(overrides)
    return policy


@pytest.fixture(scope="session")
def webhook(
    tmp_path_factory: pytest.TempPathFactory,
    test_ca: TestCA,
    opa: OpaServer,
    registry: Registry,
    cosign_keys: tuple[Path, Path],
    sigstore: PrivateSigstore,
    images: Images,
) -> Iterator[RunningWebhook]:
    work = tmp_path_factory.mktemp("webhook")
    extra = {
        "signed_images": signature_policy(registry, cosign_keys, sigstore),
        "no_debug_pods": {"mode": "dryrun", "files": {"no_debug_pods.rego": DRYRUN_REGO}},
    }
    policies = policy_dir(work / "policies", extra=extra)
    with running_webhook(
        work, test_ca, policy_dir=policies, opa_port=opa.port, registry_ca_file=registry.ca_file
    ) as running:
        yield running
