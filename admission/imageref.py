"""Image references as container runtimes read them, so that we verify exactly the image the kubelet will pull.

Grammar: distribution/reference. A reference that the runtime would resolve differently from us (uppercase in
the path, a malformed digest) is refused rather than guessed at: a lenient parser here is a bypass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from admission.errors import ImageReferenceError

DEFAULT_REGISTRY = "docker.io"
MAX_REFERENCE_LENGTH = 4096  # far above any real reference; bounds regex work on hostile input

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_HOST_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])"
    r"(?::[0-9]{1,5})?"
)


@dataclass(frozen=True, slots=True)
class ImageReference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> str:
        """The pinned form the mutating webhook writes back: the tag is dropped, the digest decides."""
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@lru_cache(maxsize=4096)  # pure, and every review of a workload names the same few images
def parse_image_reference(text: str) -> ImageReference:
    """Split `host[:port]/path[:tag][@digest]`, applying Docker's defaults (docker.io, library/, latest)."""
    if not text:
        raise ImageReferenceError("image reference is empty")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise ImageReferenceError(f"image reference is {len(text)} characters, over the {MAX_REFERENCE_LENGTH} limit")
    remainder, digest = text, None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise ImageReferenceError(f"image {text!r}: digest {digest!r} is not sha256:<64 hex> or sha512:<128 hex>")
    tag = None
    last = remainder.rsplit("/", 1)[-1]
    if ":" in last:
        remainder, tag = remainder.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise ImageReferenceError(f"image {text!r}: tag {tag!r} is not a valid tag")
    first, _, rest = remainder.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, rest
        if not _HOST_RE.fullmatch(registry):
            raise ImageReferenceError(f"image {text!r}: registry host {registry!r} is not a host[:port]")
    else:
        registry, path = DEFAULT_REGISTRY, remainder
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not _PATH_RE.fullmatch(path):
        hint = " (repository names must be lowercase)" if path.lower() != path else ""
        raise ImageReferenceError(f"image {text!r}: repository {path!r} is not a valid repository path{hint}")
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository=path, tag=tag, digest=digest)
