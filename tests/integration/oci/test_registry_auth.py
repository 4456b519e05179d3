"""The shared OCI client against the real distribution registry when it requires a password, both ways it can
ask: `auth: htpasswd` (HTTP Basic) and `auth: token` (the distribution token flow, with the token service of
tests/support/registry_token.py). The webhook verifies a cosign-signed image from it, `trustctl policy push`
publishes a bundle to it and the syncer pulls that bundle from it; a wrong or missing password is a clear
refusal (never a 500, never an admission, nothing applied)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.oci import BundleRegistry, OCIReference, registry_settings
from edgetrust.bundles.signing import SigningKey, load_verification_keys, sign_files
from edgetrust.oci.auth import load_credentials
from edgetrust.oci.registry import RegistryClient, RegistrySettings
from localpeers.opa_server import OpaServer, opa_server
from localpeers.registry import REGISTRY_LOGIN, Registry, running_registry, write_auth_file
from localpeers.simulation import InMemoryCluster
from localpeers.tlsca import TestCA
from localpeers.webhook import LOOPBACK_SITE, pod, policy_dir, review, running_webhook
from syncer.agent import SyncAgent
from syncer.sources import OCISource
from syncer.state import AgentState
from tests.support.registry_token import Login

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[3] / "policies"
WRONG = Login(REGISTRY_LOGIN.username, "not the password")


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def protected(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA
) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp(f"registry-{request.param}"), test_ca, auth=request.param) as found:
        yield found


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    """This module's webhooks' own OPA (they all load the same policies into it)."""
    with opa_server(tmp_path_factory.mktemp("opa")) as server:
        yield server


@pytest.fixture(scope="module")
def signed(protected: Registry) -> tuple[str, str, Path]:
    """(signed image by tag, unsigned image by tag, the signing public key), pushed and signed by oras and
    cosign logged in with the registry's password."""
    key, public = protected.cosign_keypair("release")
    digest = protected.push_image("edge/app", "1.0", content=b"an image behind a password")
    protected.cosign_sign(f"{protected.host}/edge/app@{digest}", key)
    protected.push_image("edge/tool", "1.0", content=b"an unsigned image behind a password")
    return f"{protected.host}/edge/app:1.0", f"{protected.host}/edge/tool:1.0", public


def _policies(work: Path, protected: Registry, public: Path) -> Path:
    policy = {
        "type": "image-signature",
        "mode": "enforce",
        "failure": "closed",
        "images": [f"{protected.host}/edge/*"],
        "keys": ["cosign.pub"],
        "files": {"cosign.pub": public.read_bytes()},
    }
    return policy_dir(work / "policies", rego=False, extra={"protected_images": policy})


def _verdicts(
    work: Path, ca: TestCA, opa: OpaServer, protected: Registry, public: Path, auth_file: Path | None, *images: str
) -> list[dict[str, object]]:
    settings: dict[str, object] = {"registry_auth_file": auth_file} if auth_file else {}
    with running_webhook(
        work,
        ca,
        policy_dir=_policies(work, protected, public),
        opa_port=opa.port,
        registry_ca_file=protected.ca_file,
        **settings,
    ) as webhook:
        return [webhook.review(review(pod(image, name=f"p{i}"))) for i, image in enumerate(images)]


def test_webhook_verifies_a_signed_image_from_a_password_protected_registry(
    protected: Registry, signed: tuple[str, str, Path], opa: OpaServer, test_ca: TestCA, tmp_path: Path
) -> None:
    image, unsigned, public = signed
    assert protected.auth_file is not None
    allowed, refused = _verdicts(tmp_path, test_ca, opa, protected, public, protected.auth_file, image, unsigned)
    assert allowed["allowed"] is True, allowed
    assert refused["allowed"] is False, refused
    assert "has no cosign signature" in str(refused["status"])


@pytest.mark.parametrize("credentials", ["wrong", "none"])
def test_webhook_with_a_wrong_or_no_registry_password_refuses_the_image_clearly(
    protected: Registry,
    signed: tuple[str, str, Path],
    opa: OpaServer,
    test_ca: TestCA,
    tmp_path: Path,
    credentials: str,
) -> None:
    image, _, public = signed
    auth_file = write_auth_file(tmp_path / "wrong.json", protected.host, WRONG) if credentials == "wrong" else None
    (answer,) = _verdicts(tmp_path, test_ca, opa, protected, public, auth_file, image)
    assert answer["allowed"] is False, answer
    status = answer["status"]
    assert isinstance(status, dict), answer
    assert status["code"] == 403, answer  # a refusal, not a server error
    if credentials == "wrong":
        assert f"refused the credentials of user {REGISTRY_LOGIN.username!r}" in status["message"]
        assert WRONG.password not in status["message"]
    else:
        assert "none" in status["message"], status["message"]
        assert "configured" in status["message"], status["message"]


def _bundle(counter: int, key: ec.EllipticCurvePrivateKey) -> bytes:
    files = build_files(
        read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=counter, commit="auth", group="gateways"
    )
    return pack(sign_files(files, SigningKey("ci-1", key)))


def _push(bundle: Path, reference: str, ca: Path, auth_file: Path | None) -> subprocess.CompletedProcess[str]:
    argv = [str(Path(sys.executable).parent / "trustctl"), "policy", "push", str(bundle), reference]
    argv += ["--registry-ca", str(ca)] + (["--registry-auth-file", str(auth_file)] if auth_file else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_syncer_pulls_a_bundle_from_a_password_protected_registry_and_a_wrong_password_applies_nothing(
    protected: Registry, tmp_path: Path
) -> None:
    signing = ec.generate_private_key(ec.SECP256R1())
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keys = load_verification_keys({"ci-1": public})
    reference = f"{protected.host}/policy/gateways:current"
    first = tmp_path / "v1.tar.gz"
    first.write_bytes(_bundle(1, signing))
    wrong = write_auth_file(tmp_path / "wrong.json", protected.host, WRONG)

    refused = _push(first, reference, protected.ca_file, wrong)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"refused the credentials of user {REGISTRY_LOGIN.username!r}" in refused.stderr
    anonymous = _push(first, reference, protected.ca_file, None)
    assert anonymous.returncode == 1, anonymous.stderr
    assert "configured" in anonymous.stderr, anonymous.stderr
    pushed = _push(first, reference, protected.ca_file, protected.auth_file)
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed 000000000001-auth" in pushed.stdout

    async def sync(auth_file: Path | None, state: Path) -> tuple[str, str, InMemoryCluster]:
        registry = BundleRegistry(registry_settings(protected.ca_file, auth_file))
        cluster = InMemoryCluster()
        try:
            agent = SyncAgent(
                cluster="site-a",
                group="gateways",
                site_class="edge-gateway",
                source=OCISource(registry, OCIReference.parse(reference)),
                keys=keys,
                kube=cluster,
                state=AgentState(state),
            )
            outcome = await agent.sync_once()
            return outcome.result, outcome.error, cluster
        finally:
            await registry.aclose()

    for auth_file, name in ((wrong, "wrong"), (None, "anonymous")):
        result, error, cluster = asyncio.run(sync(auth_file, tmp_path / f"state-{name}"))
        assert result == "source-refused", (result, error)  # the mirror answered no: not an outage
        assert error.startswith("mirror_auth_failed: "), error
        assert WRONG.password not in error
        assert cluster.writes == 0, "a sync that could not authenticate wrote to the cluster"
        assert AgentState(tmp_path / f"state-{name}").last_known_good() is None
    result, error, cluster = asyncio.run(sync(protected.auth_file, tmp_path / "state"))
    assert (result, error) == ("applied", "")
    assert cluster.objects


@pytest.mark.parametrize("protected", ["token"], indirect=True)  # Basic registries issue no tokens
def test_bearer_tokens_are_asked_for_once_per_scope_and_reused(
    protected: Registry, signed: tuple[str, str, Path]
) -> None:
    assert protected.token_service is not None
    assert protected.auth_file is not None
    service = protected.token_service
    settings = RegistrySettings(ca_file=str(protected.ca_file), credentials=load_credentials(protected.auth_file))

    async def read() -> list[str]:
        async with RegistryClient(settings) as client:
            digests = [(await client.manifest(protected.host, "edge/app", "1.0")).digest for _ in range(3)]
            manifest = await client.manifest(protected.host, "edge/app", digests[0])
            config = manifest.body["config"]["digest"]
            await client.blob(protected.host, "edge/app", config)
            return digests

    before = len(service.issued)
    digests = asyncio.run(read())
    assert len(set(digests)) == 1
    issued = service.issued[before:]
    assert issued == [(REGISTRY_LOGIN.username, ("repository:edge/app:pull",))], issued
