"""Policy bundles as OCI artifacts, so registry mirrors can fan them out to sites the hub cannot reach directly.

The layout is the one OPA reads from OCI registries: an image manifest whose single layer is the bundle
(`application/vnd.oci.image.layer.v1.tar+gzip`) with an empty OCI config. What travels is the signed bundle
itself, so a mirror (or anyone in between) is trusted for nothing: the agent verifies it as from the hub.

This module is the bundle-artifact layer only: the registry itself (bounded reads, digest checks, Basic and
token authentication) is the shared client of edgetrust/oci/registry.py, whose refusals become SyncerErrors
here, so that the agent reports them with their code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgetrust.bundles.errors import BundleError
from edgetrust.oci import errors as oci_errors
from edgetrust.oci.auth import load_credentials
from edgetrust.oci.registry import RegistryClient, RegistrySettings, check_name

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MAX_BUNDLE_BYTES = 8 * 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024  # ours is a few hundred bytes; the OCI distribution spec suggests 4 MiB at most
TIMEOUT_S = 30.0


class OCIError(BundleError):
    code = "oci_error"


class OCIAnswerRefusedError(OCIError):
    """The mirror's answer broke a bound (more than declared or allowed) or did not match its digest."""

    code = "mirror_answer_refused"


class OCIAuthError(OCIError):
    """The mirror wants credentials the syncer does not have, or refused the ones it sent."""

    code = "mirror_auth_failed"


@dataclass(frozen=True, slots=True)
class OCIReference:
    registry: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> OCIReference:
        """`registry/repository:tag`, each part in its grammar (they go into URLs)."""
        host, _, rest = text.partition("/")
        repository, _, tag = rest.rpartition(":")
        if not host or not repository or not tag or "@" in text:
            raise OCIError(f"{text!r} is not registry/repository:tag")
        with _converted():
            check_name(host, repository, tag)
        return cls(host, repository, tag)


@contextmanager
def _converted(what: str | None = None) -> Iterator[None]:
    """The shared client's refusals as the syncer's: a broken bound or digest is the mirror's answer refused."""
    try:
        yield
    except (oci_errors.AnswerRefusedError, oci_errors.DigestMismatchError) as exc:
        raise OCIAnswerRefusedError(f"{what}: {exc.problem}" if what else str(exc)) from exc
    except oci_errors.RegistryAuthError as exc:
        raise OCIAuthError(str(exc)) from exc
    except oci_errors.OCIError as exc:
        raise OCIError(str(exc)) from exc


def _manifest(bundle: bytes, config: bytes, bundle_digest: str, config_digest: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config)},
            "layers": [
                {
                    "mediaType": LAYER_MEDIA_TYPE,
                    "digest": bundle_digest,
                    "size": len(bundle),
                    # the file name `oras pull` writes it under
                    "annotations": {"org.opencontainers.image.title": "bundle.tar.gz"},
                }
            ],
        },
        separators=(",", ":"),
    ).encode()


def registry_settings(ca_file: Path | None = None, auth_file: Path | None = None) -> RegistrySettings:
    """How the syncer and `trustctl policy push` reach a registry: its roots (`--registry-ca`) and credentials
    (`--registry-auth-file`, a Docker config.json); a credentials file that does not parse is an OCIError."""
    with _converted():
        credentials = load_credentials(auth_file) if auth_file is not None else {}
    return RegistrySettings(ca_file=str(ca_file) if ca_file else None, timeout_s=TIMEOUT_S, credentials=credentials)


class BundleRegistry:
    """Push and pull signed bundles through one shared registry client (async; see push_bundle for CLIs)."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self._client = RegistryClient(settings or RegistrySettings(timeout_s=TIMEOUT_S))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def push(self, reference: OCIReference, bundle: bytes) -> str:
        """Upload the bundle and its manifest; returns the manifest digest."""
        registry, repository = reference.registry, reference.repository
        config = b"{}"
        with _converted():
            config_digest = await self._client.push_blob(registry, repository, config)
            bundle_digest = await self._client.push_blob(registry, repository, bundle)
            manifest = _manifest(bundle, config, bundle_digest, config_digest)
            return await self._client.push_manifest(registry, repository, reference.tag, manifest, MANIFEST_MEDIA_TYPE)

    async def pull(self, reference: OCIReference) -> tuple[bytes, str]:
        """The bundle the tag names now, and the manifest digest (the caller's 'etag').

        The manifest is read to MAX_MANIFEST_BYTES, the layer to the size the manifest declares (at most
        MAX_BUNDLE_BYTES), its digest checked: a mirror that sends more is cut off at the bound, not read."""
        registry, repository = reference.registry, reference.repository
        where = f"{repository}:{reference.tag}"
        with _converted(f"{where} manifest"):
            manifest = await self._client.manifest(
                registry, repository, reference.tag, accept=(MANIFEST_MEDIA_TYPE,), limit=MAX_MANIFEST_BYTES
            )
        layer = next((entry for entry in manifest.layers if entry.get("mediaType") == LAYER_MEDIA_TYPE), None)
        if layer is None:
            raise OCIError(f"{where} is not a policy bundle artifact")
        size, digest = layer.get("size"), layer.get("digest")
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(digest, str):
            raise OCIError(f"{where}: the bundle layer's size and digest are not a number and a string")
        if size > MAX_BUNDLE_BYTES:
            raise OCIError(f"bundle layer is {size} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
        with _converted(f"bundle layer {digest[:80]}"):
            blob = await self._client.blob(registry, repository, digest, limit=MAX_BUNDLE_BYTES, size=size)
        return blob, manifest.digest


def push_bundle(reference: OCIReference, bundle: bytes, settings: RegistrySettings | None = None) -> str:
    """BundleRegistry.push for a command line (`trustctl policy push`): one event loop, one client."""

    async def push() -> str:
        registry = BundleRegistry(settings)
        try:
            return await registry.push(reference, bundle)
        finally:
            await registry.aclose()

    return asyncio.run(push())
