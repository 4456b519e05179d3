"""Registry credentials and the two ways a registry asks for them (the distribution spec's token flow).

* Basic: the registry answers 401 `WWW-Authenticate: Basic realm=...`; the request is sent again with the
  configured user and password (and, for that registry, with them up front from then on).
* Bearer: the registry answers 401 `WWW-Authenticate: Bearer realm=<token service>,service=...,scope=...`;
  the token service is asked (with the configured user and password as Basic credentials, or anonymously)
  for a token for exactly the scope needed, which is cached until shortly before it expires.

Credentials come from a Docker `config.json` style file (`{"auths": {"host": {"auth": base64(user:password)}}}`,
what `docker login` and `oras login` write) and are only ever sent to the registry they are filed under, or to
the token service that registry names over https. Credential helpers (`credsStore`, `credHelpers`) run
programs and are not used.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgetrust.oci.errors import RegistryConfigError

MAX_CONFIG_BYTES = 1024 * 1024
MAX_CACHED_TOKENS = 1024  # one per (registry, scope); the webhook sees many repositories, memory stays bounded
DEFAULT_TOKEN_SECONDS = 60  # the token spec's default when the answer names no `expires_in`
MAX_TOKEN_SECONDS = 3600  # a longer promise is cut to this: a revoked grant is not used for a day
TOKEN_SKEW_SECONDS = 10  # a token is renewed this long before it expires, so it never expires in flight
DOCKER_HUB = "docker.io"
_DOCKER_HUB_KEYS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Credential:
    """A user and password for one registry; the password is never part of a repr or a message."""

    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The `Authorization` header value for HTTP Basic."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def registry_key(host: str) -> str:
    """The registry a config key or a reference names, spelled one way: `https://Index.Docker.io/v1/` and
    `docker.io` are one registry, `host:443` is `host`."""
    text = host.strip().lower()
    for scheme in ("https://", "http://"):
        text = text.removeprefix(scheme)
    text = text.split("/", 1)[0].removesuffix(":443")
    return DOCKER_HUB if text in _DOCKER_HUB_KEYS else text


def load_credentials(path: Path) -> dict[str, Credential]:
    """The credentials of a Docker `config.json` style file, by registry; a file that does not parse, or an
    entry whose `auth` is not base64 of `user:password`, stops the start (a credential silently dropped would
    turn into an anonymous request and a confusing refusal later)."""
    what = f"registry credentials {path}"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise RegistryConfigError(what, f"cannot be read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise RegistryConfigError(what, f"is over {MAX_CONFIG_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryConfigError(what, "is not JSON") from exc
    auths = document.get("auths", {}) if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        raise RegistryConfigError(what, 'has no "auths" object')
    found: dict[str, Credential] = {}
    for host, entry in auths.items():
        credential = _credential(entry, f"{what}: entry {host!r}")
        if credential is not None:
            found[registry_key(str(host))] = credential
    return found


def _credential(entry: object, what: str) -> Credential | None:
    if not isinstance(entry, dict):
        raise RegistryConfigError(what, "is not an object")
    encoded, username, password = entry.get("auth"), entry.get("username"), entry.get("password")
    if isinstance(encoded, str) and encoded:
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, ValueError) as exc:
            raise RegistryConfigError(what, '"auth" is not base64 of user:password') from exc
        if not username:
            raise RegistryConfigError(what, '"auth" is not base64 of user:password')
    if isinstance(username, str) and username and isinstance(password, str):
        if not (username + password).isprintable() or ":" in username:
            raise RegistryConfigError(what, "user or password holds a control character, or the user a colon")
        return Credential(username, password)
    if username is not None or password is not None or encoded:
        raise RegistryConfigError(what, 'needs "auth", or "username" and "password", as strings')
    return None  # e.g. `{}` left by `docker login` with a credential helper: nothing to use here


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(`bearer` | `basic` | another scheme, lowercase; its parameters) of a `WWW-Authenticate` value."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class TokenCache:
    """Bearer tokens by (registry, scope), each until shortly before it expires; at most MAX_CACHED_TOKENS."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, registry: str, scope: str) -> str | None:
        entry = self._tokens.get((registry, scope))
        if entry is None:
            return None
        token, until = entry
        if time.monotonic() >= until:
            del self._tokens[(registry, scope)]
            return None
        return token

    def put(self, registry: str, scope: str, token: str, expires_in: object) -> None:
        seconds = expires_in if isinstance(expires_in, int) and not isinstance(expires_in, bool) else 0
        seconds = min(seconds if seconds > 0 else DEFAULT_TOKEN_SECONDS, MAX_TOKEN_SECONDS)
        self._tokens.pop((registry, scope), None)
        while len(self._tokens) >= MAX_CACHED_TOKENS:
            del self._tokens[next(iter(self._tokens))]  # the oldest
        self._tokens[(registry, scope)] = (token, time.monotonic() + max(seconds - TOKEN_SKEW_SECONDS, 0))

    def forget(self, registry: str, scope: str) -> None:
        self._tokens.pop((registry, scope), None)
