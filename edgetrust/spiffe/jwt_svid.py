"""JWT-SVID validation (SPIFFE JWT-SVID §3-4) through PyJWT, once for the hub's CA and the node agent.

The key is found by the token's `kid` among the trust domain's jwt-svid keys (JWKs from its bundle); the
algorithm must be one the caller allows and is then pinned, so a token cannot pick `none`, an HMAC over the
public key, or another family than its key's (PyJWT refuses a key built for one algorithm used with another).
Audience, `sub`, `aud` and `exp` are required; expiry is checked by PyJWT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jwt

#: the asymmetric algorithms JWT-SVID §3 names that our issuers and SPIRE's use
ALGORITHMS = ("ES256", "ES384", "RS256", "PS256")
REQUIRED_CLAIMS = ("sub", "aud", "exp")


class JwtSvidError(Exception):
    """The token is not a valid JWT-SVID for this audience; the caller converts it into its own error."""


def validate_jwt_svid(
    token: str,
    keys: Mapping[str, Mapping[str, Any]],
    *,
    audience: str,
    algorithms: Sequence[str] = ALGORITHMS,
) -> dict[str, Any]:
    """The verified claims of `token`, signed by the key named by its kid (keys: kid -> public JWK)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise JwtSvidError(f"not a JWT: {exc}") from exc
    kid = header.get("kid")
    jwk = keys.get(kid) if isinstance(kid, str) else None
    if jwk is None:
        raise JwtSvidError(f"JWT-SVID signed with unknown key id {kid!r}")
    algorithm = header.get("alg")
    if algorithm not in algorithms:
        raise JwtSvidError(f"JWT-SVID algorithm {algorithm!r} is not allowed")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=str(algorithm))
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[str(algorithm)],
            audience=audience,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.PyJWTError as exc:
        raise JwtSvidError(f"JWT-SVID rejected: {exc}") from exc
    return claims
