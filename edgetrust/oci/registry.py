"""The OCI distribution API, as much of it as edgetrust needs: manifests by tag or digest, blobs, referrers
(with the referrers-tag fallback), and pushing blobs and manifests.

The registry is not trusted, only what is signed: every manifest asked for by digest and every blob is hashed
in its digest's own algorithm (sha256 or sha512) and compared; every answer is streamed with a bound (the
declared size or the caller's limit, whichever is smaller) and refused the moment it passes it, never
truncated; an answer in a Content-Encoding we did not ask for is refused (a digest is over the bytes as stored,
and an inflating body would dodge the bound). Every failure is an OCIError, whatever httpx raised: callers
convert one family at their boundary. The client is async (the webhook and the syncer both run on an event
loop); a CLI runs it under `asyncio.run`.

Names are checked before they go into a URL: a registry host, a repository in the distribution grammar, a tag
or a digest. Nothing else is ever put into a path.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urljoin

import httpx

from edgetrust._internal.bounded import CHUNK_BYTES, BoundedReadError, aread_bounded, declared_length
from edgetrust.oci.auth import Credential, TokenCache, parse_challenge, registry_key
from edgetrust.oci.errors import (
    AnswerRefusedError,
    DigestMismatchError,
    ManifestNotFoundError,
    OCIError,
    RegistryAuthError,
    RegistryUnreachableError,
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the distribution spec's own manifest limit
MAX_BLOB_BYTES = 1024 * 1024  # the default: signature payloads and bundles, never image layers
MAX_TOKEN_BYTES = 64 * 1024  # a token service is no more trusted than its registry
MAX_ERROR_BYTES = 1024  # of a refusal's body, for the message
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPES = (
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
PULL = "pull"
PUSH = "pull,push"

_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


def split_digest(digest: str) -> tuple[str, str]:
    """(`sha256` | `sha512`, hex) of a well-formed digest; anything else is an OCIError, never a KeyError."""
    if not _DIGEST_RE.fullmatch(digest):
        raise OCIError(f"digest {digest!r}", "is not sha256:<64 hex> or sha512:<128 hex>")
    algorithm, _, hex_digest = digest.partition(":")
    return algorithm, hex_digest


def is_digest(text: str) -> bool:
    return _DIGEST_RE.fullmatch(text) is not None


def content_digest(algorithm: str, body: bytes) -> str:
    """`body`'s digest in `algorithm`: content asked for by a sha512 digest is checked with sha512."""
    return f"{algorithm}:{_HASHES[algorithm](body).hexdigest()}"


def referrers_tag(digest: str) -> str:
    """The OCI referrers-tag fallback: `<alg>-<hex>`, the algorithm cut to 32 and the hex to 64 characters
    (distribution-spec 1.1), so a sha512 digest still makes a valid tag."""
    algorithm, hex_digest = split_digest(digest)
    return f"{algorithm[:32]}-{hex_digest[:64]}"


def check_name(registry: str, repository: str, reference: str | None = None) -> None:
    """A registry host, a repository and (if given) a tag or digest, each in its grammar; else an OCIError."""
    if not _HOST_RE.fullmatch(registry):
        raise OCIError(f"registry {registry!r}", "is not a host[:port]")
    if len(repository) > 255 or not _REPOSITORY_RE.fullmatch(repository):
        raise OCIError(f"repository {repository!r}", "is not a repository name (lowercase path components)")
    if reference is not None and not (_TAG_RE.fullmatch(reference) or _DIGEST_RE.fullmatch(reference)):
        raise OCIError(f"{registry}/{repository} reference {reference!r}", "is neither a tag nor a digest")


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str  # of the bytes served: the digest asked for, or sha256 of a manifest asked for by tag
    media_type: str
    body: Mapping[str, Any]

    @property
    def layers(self) -> list[Mapping[str, Any]]:
        layers = self.body.get("layers", [])
        return [layer for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []

    @property
    def manifests(self) -> list[Mapping[str, Any]]:
        entries = self.body.get("manifests", [])
        return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """How to reach registries. `plain_http` is for loopback test registries only and is named so it is seen;
    `credentials` are by registry (edgetrust.oci.auth.load_credentials reads them from a config.json)."""

    ca_file: str | None = None
    plain_http: frozenset[str] = frozenset()
    timeout_s: float = 3.0
    credentials: Mapping[str, Credential] = field(default_factory=dict)
    max_connections: int = 64


class RegistryClient:
    """One pooled HTTP client for all registries: anonymous, Basic, or bearer tokens cached per scope."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self._settings = settings or RegistrySettings()
        self._plain_http = frozenset(registry_key(host) for host in self._settings.plain_http)
        self._credentials = {registry_key(host): cred for host, cred in self._settings.credentials.items()}
        verify: ssl.SSLContext | bool = True
        if self._settings.ca_file:
            verify = ssl.create_default_context(cafile=self._settings.ca_file)
        self._http = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(self._settings.timeout_s),
            limits=httpx.Limits(
                max_connections=self._settings.max_connections,
                max_keepalive_connections=max(self._settings.max_connections // 2, 1),
            ),
            follow_redirects=True,  # blobs are often served from storage; Authorization is not sent across origins
        )
        self._tokens = TokenCache()
        self._basic: set[str] = set()  # registries that asked for Basic: the password goes up front from then on

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- reading -------------------------------------------------------------------------------------------

    async def manifest(
        self,
        registry: str,
        repository: str,
        reference: str,
        *,
        accept: tuple[str, ...] = MANIFEST_MEDIA_TYPES,
        limit: int = MAX_MANIFEST_BYTES,
    ) -> Manifest:
        """The manifest `reference` (a tag or a digest) names; asked for by digest, checked in its algorithm."""
        check_name(registry, repository, reference)
        name = f"{registry}/{repository}"
        url = f"{self._base(registry)}/{repository}/manifests/{reference}"
        response = await self._open("GET", registry, repository, url, accept=", ".join(accept))
        if response.status_code == 404:
            await response.aclose()
            raise ManifestNotFoundError(name, f"no manifest {reference!r} in the registry")
        await self._expect(response, (200,), name, f"manifest {reference!r}")
        body = await self._read(response, f"{name} manifest {reference!r}", limit=limit)
        pinned = is_digest(reference)
        digest = content_digest(reference.partition(":")[0] if pinned else "sha256", body)
        if pinned and digest != reference:
            raise DigestMismatchError(name, f"manifest asked for as {reference} hashes to {digest}")
        parsed = _json_object(body, name, f"manifest {reference!r}")
        media_type = str(parsed.get("mediaType") or response.headers.get("content-type", "")).split(";")[0]
        return Manifest(digest=digest, media_type=media_type, body=parsed)

    async def blob(
        self, registry: str, repository: str, digest: str, *, limit: int = MAX_BLOB_BYTES, size: int | None = None
    ) -> bytes:
        """The blob `digest` names, checked against it; `size` (a descriptor's) is held to exactly."""
        name = f"{registry}/{repository}"
        if not is_digest(digest):
            raise OCIError(name, f"blob digest {digest!r} is not sha256:<64 hex> or sha512:<128 hex>")
        check_name(registry, repository, digest)
        if size is not None and (size < 0 or size > limit):
            raise AnswerRefusedError(f"{name} blob {digest}", f"declares {size} bytes, over the {limit}-byte limit")
        url = f"{self._base(registry)}/{repository}/blobs/{digest}"
        response = await self._open("GET", registry, repository, url)
        if response.status_code == 404:
            await response.aclose()
            raise ManifestNotFoundError(name, f"blob {digest} is missing from the registry")
        await self._expect(response, (200,), name, f"blob {digest}")
        body = await self._read(response, f"{name} blob {digest}", limit=limit, declared=size)
        actual = content_digest(digest.partition(":")[0], body)
        if actual != digest:
            raise DigestMismatchError(name, f"blob {digest} hashes to {actual}")
        return body

    async def referrers(
        self, registry: str, repository: str, digest: str, artifact_type: str
    ) -> list[Mapping[str, Any]]:
        """OCI 1.1 referrers of `digest` of this artifact type, falling back to the `<alg>-<hex>` tag schema
        for registries without the API (a missing fallback index is no referrers)."""
        tag = referrers_tag(digest)
        check_name(registry, repository, digest)
        name = f"{registry}/{repository}"
        url = f"{self._base(registry)}/{repository}/referrers/{digest}"
        response = await self._open("GET", registry, repository, url, accept=OCI_INDEX)
        if response.status_code == 200:
            body = await self._read(response, f"{name} referrers", limit=MAX_MANIFEST_BYTES)
            index = Manifest(digest="", media_type="", body=_json_object(body, name, "referrers answer"))
        else:
            await response.aclose()
            try:
                index = await self.manifest(registry, repository, tag)
            except ManifestNotFoundError:
                return []
        return [entry for entry in index.manifests if entry.get("artifactType") == artifact_type]

    # --- writing -------------------------------------------------------------------------------------------

    async def push_blob(self, registry: str, repository: str, data: bytes) -> str:
        """Upload `data` (monolithic: POST then PUT with the digest) unless the registry has it; its digest."""
        check_name(registry, repository)
        name = f"{registry}/{repository}"
        digest = content_digest("sha256", data)
        base = f"{self._base(registry)}/{repository}"
        head = await self._open("HEAD", registry, repository, f"{base}/blobs/{digest}", actions=PUSH)
        await head.aclose()
        if head.status_code == 200:
            return digest
        started = await self._open("POST", registry, repository, f"{base}/blobs/uploads/", actions=PUSH)
        await self._expect(started, (202,), name, "blob upload")
        await started.aclose()
        location = self._upload_url(registry, base, started.headers.get("location", ""))
        location += ("&" if "?" in location else "?") + f"digest={digest}"  # keep the registry's upload state
        done = await self._open(
            "PUT", registry, repository, location, actions=PUSH, content=data, content_type="application/octet-stream"
        )
        await self._expect(done, (201,), name, f"blob upload of {digest}")
        await done.aclose()
        return digest

    async def push_manifest(self, registry: str, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Put `body` as the manifest `reference` (a tag) names; returns its digest."""
        check_name(registry, repository, reference)
        url = f"{self._base(registry)}/{repository}/manifests/{reference}"
        answer = await self._open("PUT", registry, repository, url, actions=PUSH, content=body, content_type=media_type)
        await self._expect(answer, (201,), f"{registry}/{repository}", f"manifest upload of {reference!r}")
        await answer.aclose()
        return content_digest("sha256", body)

    # --- plumbing ------------------------------------------------------------------------------------------

    def _base(self, registry: str) -> str:
        scheme = "http" if registry_key(registry) in self._plain_http else "https"
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        return f"{scheme}://{host}/v2"

    def _upload_url(self, registry: str, base: str, location: str) -> str:
        """Where the registry said to PUT the upload; on another origin it is refused, since our credentials
        would go with it."""
        if not location:
            raise AnswerRefusedError(f"{registry} blob upload", "answered 202 without a Location")
        url = urljoin(base + "/", location)
        if _origin(url) != _origin(base):
            raise AnswerRefusedError(f"{registry} blob upload", f"Location {url[:200]!r} is on another origin")
        return url

    async def _open(
        self,
        method: str,
        registry: str,
        repository: str,
        url: str,
        *,
        actions: str = PULL,
        accept: str | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> httpx.Response:
        """One streamed request, authenticated as the registry asks: a cached token or Basic up front, else
        on a 401 the challenge answered once and the request sent again. The caller closes the answer."""
        headers = {"Accept-Encoding": "identity"}  # the digest is over the bytes as stored, and no inflation
        if accept:
            headers["Accept"] = accept
        if content_type:
            headers["Content-Type"] = content_type
        scope = f"repository:{repository}:{actions}"
        authorization = self._known_authorization(registry, scope)
        if authorization:
            headers["Authorization"] = authorization
        response = await self._send(registry, method, url, headers, content=content)
        if response.status_code != 401:
            return response
        challenge = response.headers.get("www-authenticate", "")
        await response.aclose()
        if _origin(str(response.url)) != _origin(url):
            # a redirect (to storage, say) ended at another origin that asks for credentials: this registry's
            # are not for it, and answering its challenge would hand them to whoever the redirect named
            raise RegistryAuthError(
                registry, f"redirected to {_origin(str(response.url))}, which asks for credentials; none sent"
            )
        self._tokens.forget(registry, scope)
        headers["Authorization"] = await self._answer(registry, scope, challenge, retried=authorization is not None)
        response = await self._send(registry, method, url, headers, content=content)
        if response.status_code == 401:
            await response.aclose()
            raise RegistryAuthError(registry, f"refused the credentials {self._who(registry)} for {scope}")
        return response

    def _known_authorization(self, registry: str, scope: str) -> str | None:
        token = self._tokens.get(registry, scope)
        if token is not None:
            return f"Bearer {token}"
        credential = self._credentials.get(registry_key(registry))
        if credential is not None and registry in self._basic:
            return credential.basic()
        return None

    async def _answer(self, registry: str, scope: str, challenge: str, *, retried: bool) -> str:
        scheme, params = parse_challenge(challenge)
        credential = self._credentials.get(registry_key(registry))
        if scheme == "bearer":
            return f"Bearer {await self._token(registry, scope, params, credential)}"
        if scheme == "basic":
            if credential is None:
                raise RegistryAuthError(registry, "asks for a password (Basic) and none is configured for it")
            if retried and registry in self._basic:
                raise RegistryAuthError(registry, f"refused the credentials {self._who(registry)} for {scope}")
            self._basic.add(registry)
            return credential.basic()
        raise RegistryAuthError(registry, f"answered 401 without a challenge we can answer ({scheme or 'none'!r})")

    async def _token(self, registry: str, scope: str, params: dict[str, str], credential: Credential | None) -> str:
        what = f"{registry} token service"
        realm = params.pop("realm", "")
        if not realm.startswith("https://") and registry_key(registry) not in self._plain_http:
            raise RegistryAuthError(what, f"realm {realm[:200]!r} is not https")
        query = {"scope": scope}
        if "service" in params:
            query["service"] = params["service"]
        headers = {"Accept-Encoding": "identity"}
        if credential is not None:
            headers["Authorization"] = credential.basic()
        response = await self._send(registry, "GET", realm, headers, params=query)
        if response.status_code in (401, 403):
            await response.aclose()
            if credential is None:
                raise RegistryAuthError(what, f"wants credentials for {scope} and none are configured for {registry}")
            raise RegistryAuthError(what, f"refused the credentials {self._who(registry)} for {scope}")
        await self._expect(response, (200,), what, "token request")
        body = await self._read(response, what, limit=MAX_TOKEN_BYTES)
        try:
            answer = json.loads(body)
            token = str(answer.get("token") or answer["access_token"])
        except (ValueError, KeyError, AttributeError, TypeError, UnicodeDecodeError) as exc:
            raise AnswerRefusedError(what, "answered without a token") from exc
        if not token or not token.isascii() or not token.isprintable():
            raise AnswerRefusedError(what, "answered a token that is not printable ASCII")
        self._tokens.put(registry, scope, token, answer.get("expires_in"))
        return token

    def _who(self, registry: str) -> str:
        credential = self._credentials.get(registry_key(registry))
        return f"of user {credential.username!r}" if credential is not None else "(anonymous)"

    async def _send(
        self,
        registry: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """Every httpx failure becomes ours (a redirect loop or a bad realm is not a 500)."""
        try:
            request = self._http.build_request(method, url, headers=headers, params=params, content=content)
            return await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise RegistryUnreachableError(registry, f"{type(exc).__name__}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise OCIError(registry, f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    async def _expect(response: httpx.Response, statuses: tuple[int, ...], name: str, what: str) -> None:
        """Nothing but `statuses` is an answer; a refusal says why, its body read with a bound for the message."""
        if response.status_code in statuses:
            return
        status = response.status_code
        detail = await _error_text(response)
        problem = f"{what}: registry answered {status}{': ' + detail if detail else ''}"
        if status >= 500:
            raise RegistryUnreachableError(name, f"{what}: server error {status}")
        if status in (401, 403):
            raise RegistryAuthError(name, problem)
        raise OCIError(name, problem)

    @staticmethod
    async def _read(response: httpx.Response, what: str, *, limit: int, declared: int | None = None) -> bytes:
        try:
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise AnswerRefusedError(what, f"sent Content-Encoding {encoding!r} when asked for identity; refused")
            length = declared_length(response.headers.get("content-length"), what)
            bound = declared if declared is not None else limit
            if length is not None and length > bound:
                qualifier = "the size its descriptor declares" if declared is not None else "the"
                raise AnswerRefusedError(what, f"Content-Length {length} is over {qualifier} {bound}-byte limit")
            return await aread_bounded(response.aiter_raw(CHUNK_BYTES), what, limit=limit, declared=declared)
        except BoundedReadError as exc:
            raise AnswerRefusedError(what, str(exc).removeprefix(f"{what}: ")) from exc
        except httpx.TransportError as exc:
            raise RegistryUnreachableError(what, f"connection lost: {exc}") from exc
        except httpx.HTTPError as exc:
            raise OCIError(what, f"{type(exc).__name__}: {exc}") from exc
        finally:
            await response.aclose()


def _origin(url: str) -> str:
    """`scheme://host[:port]`, spelled as httpx spells it (default ports dropped); "" for what is no URL."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return ""
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}" if parsed.scheme else ""


async def _error_text(response: httpx.Response) -> str:
    """Up to MAX_ERROR_BYTES of a refusal's body, printable, for the message; never more is read."""
    kept = b""
    try:
        async for chunk in response.aiter_raw(CHUNK_BYTES):
            kept += chunk[: MAX_ERROR_BYTES - len(kept)]
            if len(kept) >= MAX_ERROR_BYTES:
                break
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
    text = kept.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()[:200]


def _json_object(body: bytes, name: str, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnswerRefusedError(name, f"{what} is not JSON") from exc
    if not isinstance(parsed, dict):
        raise AnswerRefusedError(name, f"{what} is not a JSON object")
    return parsed
