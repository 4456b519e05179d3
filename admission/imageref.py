"""Image references as container runtimes read them, so that we verify exactly the image the kubelet will pull.

Grammar: distribution/reference. A reference that the runtime would resolve differently from us (uppercase in
the path, a malformed digest, an IPv4 address in a spelling resolvers read in more than one way) is refused
rather than guessed at: a lenient parser here is a bypass.

Every reference comes out in one canonical form, the one every matcher sees (signature-policy globs, the Rego
policies' `input.images`, caches, the pinned image /mutate writes back), because the runtime pulls the same
image under many spellings: the host's case does not matter (DNS), `:443` is the HTTPS default, Docker Hub
answers as `docker.io`, `index.docker.io`, `registry-1.docker.io` and `registry.hub.docker.com`, and its
official images live under `library/`. A policy written for one spelling must not be bypassed by another.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

from admission.errors import ImageReferenceError

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
HTTPS_PORT = 443
MAX_REFERENCE_LENGTH = 4096  # far above any real reference; bounds regex work on hostile input

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_HOST_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])"
    r"(?::[0-9]+)?"
)
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class ImageReference:
    registry: str  # canonical: lowercase, no :443, docker.io for Docker Hub
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


def is_registry_host(component: str) -> bool:
    """distribution/reference's rule for the first path component: a host when it has '.' or ':', is
    `localhost`, or has an uppercase letter (repository components cannot); otherwise a Docker Hub path."""
    return "." in component or ":" in component or component == "localhost" or component.lower() != component


def canonical_registry(host: str) -> str:
    """`host[:port]` as one spelling: lowercase, IPv6 compressed, no `:443`, Docker Hub's aliases as docker.io."""
    if not _HOST_RE.fullmatch(host):
        raise ImageReferenceError(f"registry host {host!r} is not a host[:port]")
    if host.startswith("["):
        literal, _, port = host[1:].partition("]")
        try:
            name = f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError:
            raise ImageReferenceError(f"registry host {host!r} is not an IPv6 address") from None
        port = port.removeprefix(":")
    else:
        name, _, port = host.partition(":")
        name = name.lower()
        labels = name.split(".")
        if all(label.isdigit() for label in labels):
            # 127.1, 0177.0.0.1 or 2130706433.x: resolvers read such spellings as addresses, each its own way
            try:
                if len(labels) != 4 or str(ipaddress.IPv4Address(name)) != name:
                    raise ValueError(name)
            except ValueError:
                raise ImageReferenceError(
                    f"registry host {host!r} is a numeric host that is not a dotted-quad IPv4 address"
                ) from None
    if port:
        number = int(port)
        if not 1 <= number <= 65535:
            raise ImageReferenceError(f"registry host {host!r}: port {port} is out of range")
        port = "" if number == HTTPS_PORT else str(number)
    if not port and name in DOCKER_HUB_ALIASES:
        return DEFAULT_REGISTRY
    return f"{name}:{port}" if port else name


@lru_cache(maxsize=4096)  # pure, and every review of a workload names the same few images
def parse_image_reference(text: str) -> ImageReference:
    """Split `host[:port]/path[:tag][@digest]` into its canonical form (docker.io, library/, latest applied)."""
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
    if rest and is_registry_host(first):
        try:
            registry = canonical_registry(first)
        except ImageReferenceError as exc:
            raise ImageReferenceError(f"image {text!r}: {exc}") from None
        path = rest
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


def canonical_image_globs(pattern: str) -> tuple[str, ...]:
    """The globs, over canonical `registry/repository` names, that a policy's image pattern stands for.

    A pattern without wildcards is read as the runtime reads a reference, so `nginx`, `docker.io/nginx`,
    `index.docker.io/library/nginx` and `docker.io/library/nginx` are one glob. A pattern with wildcards is
    ambiguous (is `*` in the first component a host?); it is kept as written (host part lowercased) and every
    reading of it is added, so canonical names never fall outside what the pattern covered when written:
    broader coverage means more checks, never fewer.
    """
    if not pattern or pattern != pattern.strip() or "@" in pattern:
        raise ImageReferenceError(f"image glob {pattern!r} must be registry/repository, without digest or spaces")
    first, slash, rest = pattern.partition("/")
    host_part = first if slash and (is_registry_host(first) or _is_glob(first)) else ""
    path = rest if host_part else pattern
    if path.lower() != path:
        raise ImageReferenceError(
            f"image glob {pattern!r}: repository {path!r} has uppercase letters; repositories are lowercase, "
            "so it would never match"
        )
    if ":" in path.rsplit("/", 1)[-1]:
        raise ImageReferenceError(f"image glob {pattern!r} names a tag; globs match registry/repository only")
    if not _is_glob(host_part) and not _is_glob(path):
        return (parse_image_reference(pattern).name,)
    hosts: list[str] = []
    if not host_part:
        hosts.append(DEFAULT_REGISTRY)
    elif not _is_glob(host_part):
        hosts.append(canonical_registry(host_part))
    else:
        wild = host_part.lower()
        hosts.append(wild)
        if not is_registry_host(wild):  # `*/app`, `acme*/app`: may also be read as a Docker Hub path
            hosts.append(f"{DEFAULT_REGISTRY}/{wild}")
        if any(fnmatchcase(alias, wild) or fnmatchcase(f"{alias}:{HTTPS_PORT}", wild) for alias in DOCKER_HUB_ALIASES):
            hosts.append(DEFAULT_REGISTRY)
        name, colon, port = wild.rpartition(":")
        if colon and fnmatchcase(str(HTTPS_PORT), port):
            hosts.append(name)  # `registry.example:*` covered `registry.example:443`, which is canonically bare
    globs = [f"{host_part.lower()}/{rest}"] if _is_glob(host_part) else [pattern] if _is_glob(first) else []
    for host in hosts:
        globs.append(f"{host}/{path}")
        if host == DEFAULT_REGISTRY and "/" not in path:
            globs.append(f"{host}/library/{path}")
    return tuple(dict.fromkeys(globs))


def _is_glob(text: str) -> bool:
    """Wildcards in a glob part; the brackets of an IPv6 host literal (`[::1]:5000`) are not a character class."""
    if text.startswith("[") and _HOST_RE.fullmatch(text):
        return bool(_GLOB_CHARS & set(text.partition("]")[2]))
    return bool(_GLOB_CHARS & set(text))
