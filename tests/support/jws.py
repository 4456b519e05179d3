"""Forged JWS for refusal tests: what PyJWT will not make for us."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hs256_forgery(payload: bytes, secret: bytes, kid: str) -> str:
    """An HS256 JWS keyed with `secret`, e.g. a public key's PEM (the classic key confusion: a verifier that
    lets the token pick its algorithm checks an HMAC keyed with what everyone knows). PyJWT refuses to make one."""
    signing_input = _b64url(json.dumps({"alg": "HS256", "kid": kid}).encode()) + "." + _b64url(payload)
    return signing_input + "." + _b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
