"""Policy bundles as OCI artifacts, so registry mirrors can fan them out to sites the hub cannot reach directly.

The layout is the one OPA reads from OCI registries: an image manifest whose single layer is the bundle
(`application/vnd.oci.image.layer.v1.tar+gzip`) with an empty OCI config. What travels is the signed bundle
itself, so a mirror (or anyone in between) is trusted for nothing: the agent verifies it as from the hub.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from dataclasses import dataclass

import httpx

from edgetrust._internal.bounded import CHUNK_BYTES, BoundedReadError, declared_length, read_bounded
from syncer.errors import SyncerError

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MAX_BUNDLE_BYTES = 8 * 1024 * 1024
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
MAX_MANIFEST_BYTES = 256 * 1024  # ours is a few hundred bytes; the OCI distribution spec suggests 4 MiB at most


class OCIError(SyncerError):
    code = "oci_error"


class OCIAnswerRefusedError(OCIError):
    """The mirror's answer broke a bound (more than declared or allowed) or did not match its digest."""

    code = "mirror_answer_refused"


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
        """The bundle the tag names now, and the manifest digest (the caller's 'etag').

        Both answers are streamed with a bound (edgetrust/_internal/bounded.py): the manifest to
        MAX_MANIFEST_BYTES, the layer to the size the manifest declares or MAX_BUNDLE_BYTES, whichever is
        smaller, its digest checked as it streams. A mirror that sends more is cut off at the bound, not read."""
        base = f"https://{reference.registry}/v2/{reference.repository}"
        where = f"{reference.repository}:{reference.tag}"
        manifest = self._get_bounded(
            f"{base}/manifests/{reference.tag}",
            f"{where} manifest",
            limit=MAX_MANIFEST_BYTES,
            accept=MANIFEST_MEDIA_TYPE,
        )
        try:
            layers = json.loads(manifest)["layers"]
            layer = next(entry for entry in layers if entry.get("mediaType") == LAYER_MEDIA_TYPE)
            size, digest = layer["size"], layer["digest"]
        except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as exc:
            raise OCIError(f"{where} is not a policy bundle artifact") from exc
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(digest, str):
            raise OCIError(f"{where}: the bundle layer's size and digest are not a number and a string")
        if not _SHA256.fullmatch(digest):  # it goes into the blob's URL: nothing but a digest
            raise OCIError(f"{where}: the bundle layer's digest {digest[:80]!r} is not sha256:<64 hex digits>")
        if size > MAX_BUNDLE_BYTES:
            raise OCIError(f"bundle layer is {size} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
        blob = self._get_bounded(
            f"{base}/blobs/{digest}", f"bundle layer {digest}", limit=MAX_BUNDLE_BYTES, declared=size, digest=digest
        )
        return blob, _digest(manifest)

    def _get_bounded(
        self,
        url: str,
        what: str,
        *,
        limit: int,
        declared: int | None = None,
        digest: str | None = None,
        accept: str | None = None,
    ) -> bytes:
        headers = {"Accept-Encoding": "identity"}  # the digest is over the bytes as stored, and no inflation
        if accept:
            headers["Accept"] = accept
        try:
            with self._http.stream("GET", url, headers=headers) as answer:
                if answer.status_code != 200:
                    raise OCIError(f"{what}: the registry answered {answer.status_code}")
                if answer.headers.get("content-encoding", "identity") != "identity":
                    raise OCIAnswerRefusedError(f"{what}: sent {answer.headers['content-encoding']}-encoded; refused")
                length = declared_length(answer.headers.get("content-length"), what)
                if length is not None and length > (declared if declared is not None else limit):
                    raise OCIAnswerRefusedError(
                        f"{what}: Content-Length {length} is over the {declared or limit} bytes allowed"
                    )
                return read_bounded(answer.iter_raw(CHUNK_BYTES), what, limit=limit, declared=declared, digest=digest)
        except BoundedReadError as exc:
            raise OCIAnswerRefusedError(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise OCIError(f"registry unreachable: {exc}") from exc

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
