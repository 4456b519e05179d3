"""The SPIFFE bundle document (SPIFFE Trust Domain and Bundle §4): a JWKS whose keys say what they are for.

`{"keys": [...], "spiffe_sequence": n, "spiffe_refresh_hint": s}`; an `x509-svid` key carries its CA
certificate in `x5c`, a `jwt-svid` key is a public JWK with a `kid`. The hub builds its own bundle here,
federation parses its peers' bundles here, and the node agent parses what the hub hands it here: one format,
one reading of it.

Parsing is strict and fails closed, since a bundle decides whom a workload trusts: a body over the limit is
refused (never cut), and so is a truncated body, a key of unknown use, an x509-svid key that is not exactly one
CA certificate, a JWT key without a kid, a duplicate kid, a symmetric (`oct`) JWT key (anyone holding the
bundle could sign with it), or a sequence or refresh hint that is not a number. JWKs are read and written
through PyJWT's algorithms, not by hand.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

MAX_BUNDLE_BYTES = 256 * 1024
X509_SVID = "x509-svid"
JWT_SVID = "jwt-svid"
#: JWT-SVID keys are public keys (JWT-SVID §3); an `oct` key is a shared secret
JWT_KEY_TYPES = frozenset({"EC", "RSA"})
DEFAULT_REFRESH_HINT_S = 60.0

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class SpiffeBundleError(Exception):
    """Not a SPIFFE bundle we accept (or a key we cannot publish); the caller converts it into its own error."""


@dataclass(frozen=True, slots=True)
class SpiffeBundle:
    trust_domain: str
    #: the JWKS as received, handed on to workloads unchanged
    document: Mapping[str, Any]
    x509_authorities: tuple[x509.Certificate, ...]
    #: the jwt-svid keys, as JWKs (each has a kid)
    jwt_keys: tuple[dict[str, Any], ...]
    sequence: int
    refresh_hint: float

    def x509_authorities_der(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.x509_authorities)

    def x509_authorities_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)


def public_jwk(key: Any) -> dict[str, Any]:
    """A public key as a JWK (RFC 7517), by PyJWT's algorithms."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return dict(jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, rsa.RSAPublicKey):
        return dict(jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True))
    raise SpiffeBundleError(f"a {type(key).__name__} cannot be published in a SPIFFE bundle: use EC or RSA")


def build_bundle(
    x509_authorities: Sequence[x509.Certificate],
    jwt_authorities: Mapping[str, PublicKey],
    *,
    sequence: int,
    refresh_hint: int,
) -> dict[str, Any]:
    """The bundle document for these authorities: x509-svid keys first, then the jwt-svid keys by kid."""
    keys: list[dict[str, Any]] = []
    for certificate in x509_authorities:
        entry = public_jwk(certificate.public_key())
        entry.update(
            use=X509_SVID, x5c=[base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
        )
        keys.append(entry)
    for kid, public in jwt_authorities.items():
        entry = public_jwk(public)
        entry.update(use=JWT_SVID, kid=kid)
        keys.append(entry)
    return {"keys": keys, "spiffe_sequence": sequence, "spiffe_refresh_hint": refresh_hint}


def parse_bundle(trust_domain: str, body: bytes, *, limit: int = MAX_BUNDLE_BYTES) -> SpiffeBundle:
    """A bundle as it came over the wire or from disk: refused over `limit` bytes, or not JSON."""
    if len(body) > limit:
        raise SpiffeBundleError(f"{trust_domain}'s bundle is over {limit} bytes")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise SpiffeBundleError(f"{trust_domain}'s bundle is not JSON (truncated?): {exc}") from exc
    return parse_bundle_document(trust_domain, document)


def parse_bundle_document(trust_domain: str, document: Any) -> SpiffeBundle:
    """A bundle already decoded from JSON (the hub's answer to its agents carries it as an object)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise SpiffeBundleError(f"{trust_domain}'s bundle is not a JWKS with a keys list")
    authorities: list[x509.Certificate] = []
    jwt_keys: list[dict[str, Any]] = []
    for key in document["keys"]:
        if not isinstance(key, dict) or key.get("use") not in (X509_SVID, JWT_SVID):
            raise SpiffeBundleError(f"{trust_domain}'s bundle holds a key of unknown use: {str(key)[:80]}")
        if key["use"] == X509_SVID:
            authorities.append(_x509_authority(trust_domain, key))
        else:
            jwt_keys.append(_jwt_key(trust_domain, key, seen={k["kid"] for k in jwt_keys}))
    if not authorities:
        raise SpiffeBundleError(f"{trust_domain}'s bundle has no X.509 authority")
    return SpiffeBundle(
        trust_domain,
        document,
        tuple(authorities),
        tuple(jwt_keys),
        _sequence(trust_domain, document),
        _refresh_hint(trust_domain, document),
    )


def _x509_authority(trust_domain: str, key: Mapping[str, Any]) -> x509.Certificate:
    chain = key.get("x5c")
    if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
        raise SpiffeBundleError(f"{trust_domain}'s x509-svid key must carry exactly one certificate")
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise SpiffeBundleError(f"{trust_domain}'s x509-svid authority is not a CA certificate: {exc}") from exc
    if not is_ca:
        raise SpiffeBundleError(f"{trust_domain}'s x509-svid authority is not a CA certificate")
    return certificate


def _jwt_key(trust_domain: str, key: Mapping[str, Any], *, seen: set[str]) -> dict[str, Any]:
    kid = key.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SpiffeBundleError(f"{trust_domain}'s jwt-svid key has no kid")
    if kid in seen:
        raise SpiffeBundleError(f"{trust_domain}'s bundle holds two jwt-svid keys with kid {kid!r}")
    if key.get("kty") not in JWT_KEY_TYPES:
        raise SpiffeBundleError(f"{trust_domain}'s jwt-svid key {kid!r} has type {key.get('kty')!r}: EC or RSA only")
    try:
        jwt.PyJWK(dict(key))
    except jwt.PyJWTError as exc:
        raise SpiffeBundleError(f"{trust_domain}'s jwt-svid key {kid!r} is not a public key: {exc}") from exc
    if any(private in key for private in ("d", "p", "q")):
        raise SpiffeBundleError(f"{trust_domain}'s jwt-svid key {kid!r} carries its private part")
    return dict(key)


def _sequence(trust_domain: str, document: Mapping[str, Any]) -> int:
    value = document.get("spiffe_sequence")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpiffeBundleError(f"{trust_domain}'s bundle has spiffe_sequence {value!r}: a non-negative integer")
    return value


def _refresh_hint(trust_domain: str, document: Mapping[str, Any]) -> float:
    value = document.get("spiffe_refresh_hint")
    if value is None or value == 0:
        return DEFAULT_REFRESH_HINT_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise SpiffeBundleError(f"{trust_domain}'s bundle has spiffe_refresh_hint {value!r}: a positive number")
    return float(value)
