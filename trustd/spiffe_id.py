"""SPIFFE IDs and trust domains, validated as the SPIFFE-ID specification requires.

Names come partly from device claims, so every rendered ID is validated segment by segment: a claim can never
add a path segment, a `..`, or another trust domain.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from trustd.errors import InvalidSpiffeIdError

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
