"""Attacks on the registry credentials the webhook holds (`registry_auth_file`), performed against the real
webhook with a registry run by the attacker: real HTTPS on loopback, with a certificate the cluster trusts.

The credentials are filed for that registry's host, 127.0.0.1:<port>. The attacker wants them: by redirecting
to another origin (`localhost:<port>`, the same server under another name) that asks for a token, or by naming
a token realm over plain http. Neither gets a byte of them: the image is refused, the refusal says why, and the
attacker's server saw no Authorization header at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from localpeers.opa_server import OpaServer, opa_server
from localpeers.registry import REGISTRY_LOGIN, write_auth_file
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, review, running_webhook
from tests.support.https_stub import QuietHandler, serving_https

pytestmark = pytest.mark.integration


@dataclass
class CredentialThief:
    port: int
    authorizations: list[str] = field(default_factory=list)  # every Authorization header it was sent
    paths: list[str] = field(default_factory=list)  # every path asked for, on either name

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def thief(test_ca: TestCA) -> Iterator[CredentialThief]:
    """`redirect/*`: 127.0.0.1 redirects to localhost, which challenges for a token from itself;
    `http-realm/*`: a token challenge whose realm is plain http (the same port: nothing there speaks it)."""
    cert = test_ca.issue("credential-thief", hosts=("127.0.0.1", "localhost"))
    state: dict[str, CredentialThief] = {}

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server names it
            found = state["thief"]
            found.paths.append(self.path)
            if "Authorization" in self.headers:
                found.authorizations.append(self.headers["Authorization"])
            host = self.headers.get("Host", "")
            if self.path.startswith("/token"):
                self.send(200, b'{"token": "stolen"}')
            elif self.path.startswith("/v2/redirect/") and host.startswith("127.0.0.1"):
                self.send(302, b"", {"Location": f"https://localhost:{found.port}{self.path}"})
            elif self.path.startswith("/v2/redirect/"):
                challenge = f'Bearer realm="https://localhost:{found.port}/token",service="thief"'
                self.send(401, b"{}", {"WWW-Authenticate": challenge})
            elif self.path.startswith("/v2/http-realm/"):
                challenge = f'Bearer realm="http://127.0.0.1:{found.port}/token",service="thief"'
                self.send(401, b"{}", {"WWW-Authenticate": challenge})
            else:
                self.send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')

    with serving_https(Handler, cert) as port:
        state["thief"] = CredentialThief(port=port)
        yield state["thief"]


@pytest.fixture(scope="module")
def own_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    with opa_server(tmp_path_factory.mktemp("opa-credentials")) as server:
        yield server


@pytest.mark.parametrize(
    ("repository", "reason"),
    [
        ("redirect", "which asks for credentials; none sent"),
        ("http-realm", "is not https"),
    ],
)
def test_registry_redirecting_to_another_origin_or_naming_an_http_token_realm_gets_no_registry_password(
    thief: CredentialThief, own_opa: OpaServer, test_ca: TestCA, tmp_path: Path, repository: str, reason: str
) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    policy = {
        "type": "image-signature",
        "mode": "enforce",
        "failure": "closed",
        "images": [f"{thief.host}/*"],
        "keys": ["cosign.pub"],
        "files": {"cosign.pub": pem},
    }
    policies = policy_dir(tmp_path / "policies", rego=False, extra={"thief_images": policy})
    auth_file = write_auth_file(tmp_path / "config.json", thief.host, REGISTRY_LOGIN)
    before = len(thief.paths)
    with running_webhook(
        tmp_path,
        test_ca,
        policy_dir=policies,
        opa_port=own_opa.port,
        registry_ca_file=test_ca.ca_file,
        registry_auth_file=auth_file,
    ) as webhook:
        answer = webhook.review(review(pod(f"{thief.host}/{repository}/app:v1", name=repository)))
    assert answer["allowed"] is False, answer
    assert answer["status"]["code"] == 403  # a refusal, not a server error
    assert reason in answer["status"]["message"]
    assert REGISTRY_LOGIN.password not in answer["status"]["message"]
    assert len(thief.paths) > before, "the webhook never asked the attacker's registry"
    assert not any(path.startswith("/token") for path in thief.paths), "the attacker's token realm was asked"
    assert thief.authorizations == [], "the attacker's server was sent an Authorization header"
