"""SPIFFE IDs and trust domains, validated as the SPIFFE-ID specification requires.

Names come partly from device claims, so every rendered ID is validated segment by segment: a claim can never
add a path segment, a `..`, or another trust domain.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from trustd.errors import InvalidSpiffeIdError, ReservedSpiffeIdError

MAX_SPIFFE_ID_BYTES = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class TrustDomain:
    name: str

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        name = text.removeprefix("spiffe://")
        if not name or not _TRUST_DOMAIN.fullmatch(name):
            raise InvalidSpiffeIdError(
                f"trust domain {text!r} is invalid: use lowercase letters, digits, '.', '-' and '_' only"
            )
        return cls(name)

    @property
    def id(self) -> SpiffeId:
        return SpiffeId(self, "")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: TrustDomain
    path: str

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if len(text.encode()) > MAX_SPIFFE_ID_BYTES:
            raise InvalidSpiffeIdError(f"SPIFFE ID longer than {MAX_SPIFFE_ID_BYTES} bytes")
        if not text.startswith("spiffe://"):
            raise InvalidSpiffeIdError(f"{text[:80]!r} is not a SPIFFE ID: it must start with spiffe://")
        rest = text.removeprefix("spiffe://")
        domain, slash, path = rest.partition("/")
        trust_domain = TrustDomain.parse(domain)
        if slash:
            _check_path("/" + path, text)
            return cls(trust_domain, "/" + path)
        return cls(trust_domain, "")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain.name}{self.path}"


def _check_path(path: str, whole: str) -> None:
    for segment in path.split("/")[1:]:
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise InvalidSpiffeIdError(
                f"{whole[:120]!r}: path segment {segment!r} is invalid "
                "(letters, digits, '.', '-', '_'; no empty segment, '.' or '..')"
            )


def render_spiffe_id(template: str, trust_domain: TrustDomain, **fields: str) -> SpiffeId:
    """Fill a naming template such as '/site/{site}/node/{node}'; a missing field raises KeyError."""
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        value = fields[field]
        if not _SEGMENT.fullmatch(value) or value in (".", ".."):
            raise InvalidSpiffeIdError(
                f"claim {field}={value[:40]!r} cannot be a SPIFFE ID path segment (letters, digits, '.', '-', '_')"
            )
    path = template.format(**fields)
    _check_path(path, path)
    spiffe_id = SpiffeId(trust_domain, path)
    if len(str(spiffe_id).encode()) > MAX_SPIFFE_ID_BYTES:
        raise InvalidSpiffeIdError(f"SPIFFE ID longer than {MAX_SPIFFE_ID_BYTES} bytes")
    return spiffe_id


#: first path segments only the hub assigns: its own ID, clusters, operators and publishers; and node aliases
#: (trustd/server/aliases.py), parents that stand for a set of nodes and are nobody's name
RESERVED_NAMESPACES = ("trustd", "cluster", "operator", "publisher", "alias")
_FIELD_VALUE = "[A-Za-z0-9._-]+"


class ReservedNames:
    """The names no registration entry and no enrolled device may take: privileged callers' namespaces.

    A node mints whatever its entries name, and the hub decides who is an operator, a publisher or a cluster
    from the SPIFFE ID alone; so an ID a node could obtain (through an entry, or through the naming template
    when it enrolls) must never equal or sit under the hub's ID, a cluster, operator or publisher ID or
    namespace, or a node's ID. This is the one rule: entry creation, the naming template at start, and the
    agent API's minting all ask it.
    """

    def __init__(self, trust_domain: TrustDomain, *, node_template: str, privileged: frozenset[str] = frozenset()):
        self.trust_domain = trust_domain
        self.node_template = node_template
        prefixes: set[tuple[str, ...]] = {(name,) for name in RESERVED_NAMESPACES}
        for text in privileged:
            parsed = SpiffeId.parse(text)
            if parsed.trust_domain == trust_domain:
                prefixes.add(_segments(parsed.path))
        self._prefixes = frozenset(prefixes)
        self._node = tuple(re.compile(_segment_pattern(s)) for s in _segments(node_template))

    def reason(self, spiffe_id: SpiffeId, *, is_node: Callable[[str], bool] | None = None) -> str | None:
        """Why `spiffe_id` may not be given to a workload, or None when it may.

        `is_node` names enrolled devices (e.g. enrolled under an earlier naming template); each ancestor of the
        ID is asked, so the cost is the ID's depth."""
        if spiffe_id.trust_domain != self.trust_domain:
            return f"{spiffe_id} is not in trust domain {self.trust_domain}"
        segments = _segments(spiffe_id.path)
        privileged = self._privileged(segments)
        if privileged is not None:
            return f"{spiffe_id} {privileged}"
        if len(segments) >= len(self._node) and all(p.fullmatch(s) for p, s in zip(self._node, segments, strict=False)):
            return f"{spiffe_id} equals or sits under a node ID (naming template {self.node_template!r})"
        if is_node is not None:
            for depth in range(1, len(segments) + 1):
                ancestor = f"spiffe://{self.trust_domain}/" + "/".join(segments[:depth])
                if is_node(ancestor):
                    return f"{spiffe_id} equals or sits under the enrolled node {ancestor}"
        return None

    def privileged_reason(self, spiffe_id: SpiffeId) -> str | None:
        """Why a node may not hold `spiffe_id` as its own name (enrolled under an earlier template), or None."""
        if spiffe_id.trust_domain != self.trust_domain:
            return f"{spiffe_id} is not in trust domain {self.trust_domain}"
        privileged = self._privileged(_segments(spiffe_id.path))
        return f"{spiffe_id} {privileged}" if privileged is not None else None

    def _privileged(self, segments: tuple[str, ...]) -> str | None:
        if not segments:
            return "is the trust domain itself, reserved to the hub"
        for prefix in self._prefixes:
            if segments[: len(prefix)] == prefix:
                return (
                    f"is in the reserved namespace /{'/'.join(prefix)} (hub, clusters, operators, publishers, aliases)"
                )
        return None

    def check(self, spiffe_id: SpiffeId, *, is_node: Callable[[str], bool] | None = None) -> None:
        reason = self.reason(spiffe_id, is_node=is_node)
        if reason is not None:
            raise ReservedSpiffeIdError(reason)

    def check_template(self) -> None:
        """Refuse a naming template that could render a reserved name for some device's claims."""
        template = _segments(self.node_template)
        if not template:
            raise ReservedSpiffeIdError(f"the naming template {self.node_template!r} renders the trust domain itself")
        for prefix in self._prefixes:
            if len(template) >= len(prefix) and all(p.fullmatch(s) for p, s in zip(self._node, prefix, strict=False)):
                raise ReservedSpiffeIdError(
                    f"the naming template {self.node_template!r} can render a name in the reserved namespace "
                    f"/{'/'.join(prefix)}: start it with a fixed segment of your own, e.g. /site/{{site}}/node/{{node}}"
                )


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s)


def _segment_pattern(template_segment: str) -> str:
    """A template segment as a regex over what it can render: literals as themselves, each field as any value."""
    pattern = []
    for literal, field, _, _ in string.Formatter().parse(template_segment):
        pattern.append(re.escape(literal))
        if field is not None:
            pattern.append(_FIELD_VALUE)
    return "".join(pattern)
