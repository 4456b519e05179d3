"""A distribution token service (the `auth: token` flow) on loopback over TLS, for a registry that requires a
password: it checks the Basic credentials of the one test user and issues JWTs for the scopes asked for.

The registry (Debian's docker-registry, CNCF distribution 2.8) trusts a token when its `x5c` leaf certificate
chains to its `rootcertbundle`, and its issuer, audience (the service), expiry and `access` claims are right;
the leaf here is issued by the test CA for exactly that. Every issued token is recorded, so a test can count
how often a client asked.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from localpeers.tlsca import TestCA
from tests.support.https_stub import QuietHandler, serving_https

TOKEN_SERVICE = "edgetrust-test-registry"
TOKEN_ISSUER = "edgetrust-test-token-service"
TOKEN_SECONDS = 300


@dataclass(frozen=True)
class Login:
    username: str
    password: str


@dataclass
class TokenService:
    realm: str
    service: str
    issuer: str
    signer_cert: Path  # the registry's `rootcertbundle` is the CA that issued it
    issued: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (user, scopes) per token
    refused: list[str] = field(default_factory=list)  # the user named by each refused request ("" anonymous)


def _access(scopes: list[str]) -> list[dict[str, object]]:
    """The `access` claim granting what each `repository:<name>:<actions>` scope asks for."""
    granted: list[dict[str, object]] = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name and actions:
            granted.append({"type": kind, "name": name, "actions": actions.split(",")})
    return granted


@contextmanager
def running_token_service(ca: TestCA, login: Login) -> Iterator[TokenService]:
    tls = ca.issue("registry-token-service")
    signer = ca.issue("registry-token-signer")
    leaf = x509.load_pem_x509_certificate(signer.cert.read_bytes())
    x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
    key = signer.key.read_bytes()
    state: dict[str, TokenService] = {}

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server names it
            service = state["service"]
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path != "/token" or query.get("service") != [service.service]:
                self._send(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
                return
            user = self._user()
            if user is None:
                service.refused.append(self._named())
                self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "credentials required"}]})
                return
            scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
            now = int(time.time())
            claims = {
                "iss": service.issuer,
                "sub": user,
                "aud": service.service,
                "iat": now,
                "nbf": now - 5,
                "exp": now + TOKEN_SECONDS,
                "jti": secrets.token_hex(8),
                "access": _access(scopes),
            }
            token = jwt.encode(claims, key, algorithm="ES256", headers={"x5c": x5c})
            service.issued.append((user, tuple(scopes)))
            self._send(200, {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS})

        def _named(self) -> str:
            header = self.headers.get("Authorization", "")
            try:
                return base64.b64decode(header.removeprefix("Basic "), validate=True).decode().partition(":")[0]
            except (binascii.Error, ValueError):
                return ""

        def _user(self) -> str | None:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, ValueError):
                return None
            good = secrets.compare_digest(user, login.username) and secrets.compare_digest(password, login.password)
            return user if good else None

        def _send(self, status: int, body: dict[str, object]) -> None:
            self.send(status, json.dumps(body).encode())

    with serving_https(Handler, tls) as port:
        state["service"] = TokenService(
            realm=f"https://127.0.0.1:{port}/token", service=TOKEN_SERVICE, issuer=TOKEN_ISSUER, signer_cert=signer.cert
        )
        yield state["service"]
