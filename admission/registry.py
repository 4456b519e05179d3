"""The webhook's registry: the shared OCI client (edgetrust/oci/registry.py) spoken to in image references,
its refusals turned into the webhook's own errors at this seam.

All reading, bounds, digest checks and authentication are the shared client's; this module only converts.
cosign.py, keyless.py, bundles.py and images.py must see AdmissionErrors with their codes, since images.py is
the boundary that turns anything else into a refusal and would lose the difference between an unreachable
registry (a remembered verdict may still admit) and one that lied (never admits).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from admission.errors import (
    BlobMismatchError,
    ManifestNotFoundError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachableError,
)
from admission.imageref import ImageReference
from edgetrust.oci import errors as oci_errors
from edgetrust.oci import registry as oci
from edgetrust.oci.registry import MAX_BLOB_BYTES, Manifest, RegistrySettings

__all__ = ["Manifest", "RegistryClient", "RegistrySettings", "split_digest"]

_ADMISSION_ERRORS: tuple[tuple[type[oci_errors.OCIError], type[RegistryError]], ...] = (
    (oci_errors.RegistryUnreachableError, RegistryUnreachableError),
    (oci_errors.ManifestNotFoundError, ManifestNotFoundError),
    (oci_errors.DigestMismatchError, BlobMismatchError),
    (oci_errors.RegistryAuthError, RegistryAuthError),
)


@contextmanager
def _converted() -> Iterator[None]:
    try:
        yield
    except oci_errors.OCIError as exc:
        kind = next((ours for theirs, ours in _ADMISSION_ERRORS if isinstance(exc, theirs)), RegistryError)
        raise kind(str(exc)) from exc


def split_digest(digest: str) -> tuple[str, str]:
    """(`sha256` | `sha512`, hex) of a well-formed digest; anything else is a RegistryError, never a KeyError."""
    with _converted():
        return oci.split_digest(digest)


class RegistryClient:
    """The shared client, one pool for all registries, addressed by ImageReference."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self._client = oci.RegistryClient(settings)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve(self, image: ImageReference) -> Manifest:
        """The manifest the reference names now; by digest when it has one (the digest wins over the tag)."""
        return await self.manifest(image, image.digest or image.tag or "latest")

    async def manifest(self, image: ImageReference, reference: str) -> Manifest:
        with _converted():
            return await self._client.manifest(image.registry, image.repository, reference)

    async def blob(self, image: ImageReference, digest: str, *, limit: int = MAX_BLOB_BYTES) -> bytes:
        with _converted():
            return await self._client.blob(image.registry, image.repository, digest, limit=limit)

    async def referrers(self, image: ImageReference, digest: str, artifact_type: str) -> list[Mapping[str, Any]]:
        """OCI 1.1 referrers, falling back to the `sha256-<hex>` tag schema for registries without the API."""
        with _converted():
            return await self._client.referrers(image.registry, image.repository, digest, artifact_type)
