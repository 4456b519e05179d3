"""Just enough of the OCI distribution API to pin a tag to a digest and read what cosign attaches to it.

Every manifest and blob is hashed on arrival and compared with the digest it was asked for: the registry is not
trusted, only the signatures are. Sizes are bounded before reading, since a hostile registry can serve anything.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from admission.errors import BlobMismatchError, ManifestNotFoundError, RegistryError, RegistryUnreachableError
from admission.imageref import ImageReference

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the distribution spec's own manifest limit
MAX_BLOB_BYTES = 1024 * 1024  # we only read signature payloads and bundles, never layers
MAX_TOKEN_BYTES = 64 * 1024  # a bearer token answer; a token service is no more trusted than its registry

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


def split_digest(digest: str) -> tuple[str, str]:
    """(`sha256` | `sha512`, hex) of a well-formed digest; anything else is a RegistryError, never a KeyError."""
    if not _DIGEST_RE.fullmatch(digest):
        raise RegistryError(f"digest {digest!r} is not sha256:<64 hex> or sha512:<128 hex>")
    algorithm, _, hex_digest = digest.partition(":")
    return algorithm, hex_digest


def content_digest(algorithm: str, body: bytes) -> str:
    """`body`'s digest in `algorithm`: content asked for by a sha512 digest is checked with sha512."""
    return f"{algorithm}:{_HASHES[algorithm](body).hexdigest()}"


def referrers_tag(digest: str) -> str:
    """The OCI referrers-tag fallback: `<alg>-<hex>`, the algorithm cut to 32 and the hex to 64 characters
    (distribution-spec 1.1), so a sha512 digest still makes a valid tag."""
    algorithm, hex_digest = split_digest(digest)
    return f"{algorithm[:32]}-{hex_digest[:64]}"


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
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
    """How to reach registries: `plain_http` is for loopback test registries only and is named so it is seen."""

    ca_file: str | None = None
    plain_http: frozenset[str] = frozenset()
    timeout_s: float = 3.0
    credentials: Mapping[str, tuple[str, str]] = field(default_factory=dict)


class RegistryClient:
    """One pooled HTTP client for all registries; anonymous or basic-auth bearer tokens, cached per scope."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self._settings = settings or RegistrySettings()
        verify: ssl.SSLContext | bool = True
        if self._settings.ca_file:
            verify = ssl.create_default_context(cafile=self._settings.ca_file)
        self._http = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(self._settings.timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            follow_redirects=True,
        )
        self._tokens: dict[tuple[str, str], str] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def _base(self, registry: str) -> str:
        scheme = "http" if registry in self._settings.plain_http else "https"
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        return f"{scheme}://{host}/v2"

    async def resolve(self, image: ImageReference) -> Manifest:
        """The manifest the reference names now; by digest when it has one (the digest wins over the tag)."""
        reference = image.digest or image.tag or "latest"
        return await self.manifest(image, reference)

    async def manifest(self, image: ImageReference, reference: str) -> Manifest:
        url = f"{self._base(image.registry)}/{image.repository}/manifests/{reference}"
        response = await self._get(image, url, accept=", ".join(MANIFEST_MEDIA_TYPES))
        if response.status_code != 200:
            await response.aclose()
        if response.status_code == 404:
            raise ManifestNotFoundError(f"{image.name}: no manifest {reference!r} in the registry")
        self._raise_for_status(image, response, f"manifest {reference!r}")
        body = await self._read_bounded(response, MAX_MANIFEST_BYTES, f"{image.name} manifest {reference!r}")
        # Asked for by digest: checked in that digest's algorithm (a sha512 pin is not taken on trust).
        pinned = _DIGEST_RE.fullmatch(reference)
        digest = content_digest(reference.partition(":")[0] if pinned else "sha256", body)
        if pinned and digest != reference:
            raise BlobMismatchError(f"{image.name}: manifest asked for as {reference} hashes to {digest}")
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise RegistryError(f"{image.name}: manifest {reference!r} is not JSON") from exc
        if not isinstance(parsed, dict):
            raise RegistryError(f"{image.name}: manifest {reference!r} is not a JSON object")
        media_type = str(parsed.get("mediaType") or response.headers.get("content-type", "")).split(";")[0]
        return Manifest(digest=digest, media_type=media_type, body=parsed)

    async def blob(self, image: ImageReference, digest: str, *, limit: int = MAX_BLOB_BYTES) -> bytes:
        if not _DIGEST_RE.fullmatch(digest):
            raise RegistryError(f"{image.name}: blob digest {digest!r} is not sha256:<64 hex> or sha512:<128 hex>")
        url = f"{self._base(image.registry)}/{image.repository}/blobs/{digest}"
        response = await self._get(image, url)
        if response.status_code != 200:
            await response.aclose()
        if response.status_code == 404:
            raise ManifestNotFoundError(f"{image.name}: blob {digest} is missing from the registry")
        self._raise_for_status(image, response, f"blob {digest}")
        body = await self._read_bounded(response, limit, f"{image.name} blob {digest}")
        actual = content_digest(digest.partition(":")[0], body)
        if actual != digest:
            raise BlobMismatchError(f"{image.name}: blob {digest} hashes to {actual}")
        return body

    async def referrers(self, image: ImageReference, digest: str, artifact_type: str) -> list[Mapping[str, Any]]:
        """OCI 1.1 referrers, falling back to the `sha256-<hex>` tag schema for registries without the API."""
        tag = referrers_tag(digest)
        url = f"{self._base(image.registry)}/{image.repository}/referrers/{digest}"
        response = await self._get(image, url, accept="application/vnd.oci.image.index.v1+json")
        if response.status_code == 200:
            body = await self._read_bounded(response, MAX_MANIFEST_BYTES, f"{image.name} referrers")
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                raise RegistryError(f"{image.name}: referrers answer is not JSON") from exc
            if not isinstance(parsed, dict):
                raise RegistryError(f"{image.name}: referrers answer is not a JSON object")
            index = Manifest(digest="", media_type="", body=parsed)
        else:
            await response.aclose()
            try:
                index = await self.manifest(image, tag)
            except ManifestNotFoundError:
                return []
        return [entry for entry in index.manifests if entry.get("artifactType") == artifact_type]

    async def _get(self, image: ImageReference, url: str, *, accept: str | None = None) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        scope = f"repository:{image.repository}:pull"
        token = self._tokens.get((image.registry, scope))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = await self._send(image, url, headers)
        if response.status_code == 401 and "bearer" in response.headers.get("www-authenticate", "").lower():
            await response.aclose()
            token = await self._token(image, response.headers["www-authenticate"], scope)
            headers["Authorization"] = f"Bearer {token}"
            response = await self._send(image, url, headers)
        return response

    async def _send(
        self,
        image: ImageReference,
        url: str,
        headers: Mapping[str, str],
        *,
        params: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """One streamed GET; every httpx failure becomes ours (a redirect loop or a bad realm is not a 500)."""
        try:
            request = self._http.build_request("GET", url, headers=headers, params=params)
            return await self._http.send(request, stream=True, auth=auth)
        except httpx.TransportError as exc:
            raise RegistryUnreachableError(f"{image.registry}: {type(exc).__name__}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise RegistryError(f"{image.registry}: {type(exc).__name__}: {exc}") from exc

    async def _token(self, image: ImageReference, challenge: str, scope: str) -> str:
        params = dict(_CHALLENGE_RE.findall(challenge))
        realm = params.pop("realm", "")
        if not realm.startswith("https://") and image.registry not in self._settings.plain_http:
            raise RegistryError(f"{image.registry}: token realm {realm!r} is not https")
        params["scope"] = scope
        auth = self._settings.credentials.get(image.registry)
        response = await self._send(image, realm, {}, params=params, auth=auth)
        if response.status_code != 200:
            await response.aclose()
            raise RegistryError(f"{image.registry}: token service answered {response.status_code}")
        body = await self._read_bounded(response, MAX_TOKEN_BYTES, f"{image.registry} token service")
        try:
            answer = json.loads(body)
            token = str(answer.get("token") or answer["access_token"])
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise RegistryError(f"{image.registry}: token service answer has no token") from exc
        if not token.isascii() or not token.isprintable():
            raise RegistryError(f"{image.registry}: token service answered a token that is not printable ASCII")
        self._tokens[(image.registry, scope)] = token
        return token

    @staticmethod
    def _raise_for_status(image: ImageReference, response: httpx.Response, what: str) -> None:
        if response.status_code >= 500:
            raise RegistryUnreachableError(f"{image.registry}: {what}: server error {response.status_code}")
        if response.status_code != 200:
            raise RegistryError(f"{image.name}: {what}: registry answered {response.status_code}")

    @staticmethod
    async def _read_bounded(response: httpx.Response, limit: int, what: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
            await response.aclose()
            raise RegistryError(f"{what}: {declared} bytes, over the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise RegistryError(f"{what}: over the {limit}-byte limit")
                chunks.append(chunk)
        except httpx.TransportError as exc:
            raise RegistryUnreachableError(f"{what}: connection lost: {exc}") from exc
        except httpx.HTTPError as exc:  # e.g. a Content-Encoding that does not decode
            raise RegistryError(f"{what}: {type(exc).__name__}: {exc}") from exc
        finally:
            await response.aclose()
        return b"".join(chunks)
