"""Policy bundles as OCI artifacts, so registry mirrors can fan them out to sites the hub cannot reach directly.

The layout is the one OPA reads from OCI registries: an image manifest whose single layer is the bundle
(`application/vnd.oci.image.layer.v1.tar+gzip`) with an empty OCI config. What travels is the signed bundle
itself, so a mirror (or anyone in between) is trusted for nothing: the agent verifies it as from the hub.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from dataclasses import dataclass

import httpx

from syncer.errors import SyncerError

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MAX_BUNDLE_BYTES = 8 * 1024 * 1024


class OCIError(SyncerError):
    code = "oci_error"


@dataclass(frozen=True, slots=True)
class OCIReference:
    registry: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> OCIReference:
        host, _, rest = text.partition("/")
        repository, _, tag = rest.rpartition(":")
        if not host or not repository or not tag or "@" in text:
            raise OCIError(f"{text!r} is not registry/repository:tag")
        return cls(host, repository, tag)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BundleRegistry:
    def __init__(self, *, ca_file: str | None = None, timeout_s: float = 30.0) -> None:
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.Client(verify=verify, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def push(self, reference: OCIReference, bundle: bytes) -> str:
        """Upload the bundle and its manifest; returns the manifest digest."""
        base = f"https://{reference.registry}/v2/{reference.repository}"
        config = b"{}"
        for blob in (config, bundle):
            self._upload(base, blob)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": _digest(config), "size": len(config)},
                "layers": [
                    {
                        "mediaType": LAYER_MEDIA_TYPE,
                        "digest": _digest(bundle),
                        "size": len(bundle),
                        # the file name `oras pull` writes it under
                        "annotations": {"org.opencontainers.image.title": "bundle.tar.gz"},
                    }
                ],
            },
            separators=(",", ":"),
        ).encode()
        answer = self._request(
            "PUT", f"{base}/manifests/{reference.tag}", content=manifest, headers={"Content-Type": MANIFEST_MEDIA_TYPE}
        )
        if answer.status_code != 201:
            raise OCIError(f"manifest upload refused: {answer.status_code} {answer.text[:200]}")
        return _digest(manifest)

    def pull(self, reference: OCIReference) -> tuple[bytes, str]:
        """The bundle the tag names now, and the manifest digest (the caller's 'etag')."""
        base = f"https://{reference.registry}/v2/{reference.repository}"
        answer = self._request("GET", f"{base}/manifests/{reference.tag}", headers={"Accept": MANIFEST_MEDIA_TYPE})
        if answer.status_code != 200:
            raise OCIError(f"{reference.repository}:{reference.tag}: manifest answered {answer.status_code}")
        try:
            layers = json.loads(answer.content)["layers"]
            layer = next(entry for entry in layers if entry.get("mediaType") == LAYER_MEDIA_TYPE)
        except (ValueError, KeyError, TypeError, StopIteration) as exc:
            raise OCIError(f"{reference.repository}:{reference.tag} is not a policy bundle artifact") from exc
        if int(layer.get("size", 0)) > MAX_BUNDLE_BYTES:
            raise OCIError(f"bundle layer is {layer.get('size')} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
        blob = self._request("GET", f"{base}/blobs/{layer['digest']}")
        if blob.status_code != 200 or _digest(blob.content) != layer["digest"]:
            raise OCIError(f"bundle layer {layer['digest']} is missing or does not match its digest")
        return blob.content, _digest(answer.content)

    def _upload(self, base: str, blob: bytes) -> None:
        digest = _digest(blob)
        if self._request("HEAD", f"{base}/blobs/{digest}").status_code == 200:
            return
        started = self._request("POST", f"{base}/blobs/uploads/")
        location = started.headers.get("location")
        if started.status_code != 202 or not location:
            raise OCIError(f"blob upload refused: {started.status_code}")
        url = location if location.startswith("http") else f"{base.split('/v2/')[0]}{location}"
        url += ("&" if "?" in url else "?") + f"digest={digest}"  # keep the registry's own upload state
        done = self._request("PUT", url, content=blob, headers={"Content-Type": "application/octet-stream"})
        if done.status_code != 201:
            raise OCIError(f"blob upload of {digest} refused: {done.status_code}")

    def _request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise OCIError(f"registry unreachable: {exc}") from exc
