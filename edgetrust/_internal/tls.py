"""Who is on the other end of a TLS connection, for ASGI apps served by uvicorn.

uvicorn verifies client certificates (ssl_cert_reqs) but does not hand them to the app. This protocol adds
the ASGI TLS extension to every request's scope (`scope["extensions"]["tls"]["client_cert_chain"]`, PEM), so
an endpoint can read the caller's SPIFFE ID from its verified X.509-SVID.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trustd.errors import TrustdError

#: where `peer_spiffe_id` keeps the SPIFFE ID it read, in the connection's TLS extension (one per connection)
_SPIFFE_ID_KEY = "edgetrust.spiffe_id"


class PeerCertificateProtocol(HttpToolsProtocol):
    _tls: dict[object, object] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) else None
        # one extension per connection, shared by its requests: the certificate is read (and its SPIFFE ID
        # parsed) once per connection, not per request (a long-polling cluster sends one every `wait` seconds)
        self._tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else []}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {"tls": self._tls if self._tls is not None else {"client_cert_chain": []}}


def peer_spiffe_id(scope: Mapping[str, Any]) -> str:
    """The URI SAN of the verified client certificate; the TLS layer already checked it against our CA. Kept in
    the connection's TLS extension once read (the certificate is the connection's: it does not change)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    known = tls.get(_SPIFFE_ID_KEY)
    if isinstance(known, str):
        return known
    spiffe_id = _read_spiffe_id(tls.get("client_cert_chain") or [])
    if isinstance(tls, dict):
        tls[_SPIFFE_ID_KEY] = spiffe_id
    return spiffe_id


def _read_spiffe_id(chain: list[str]) -> str:
    if not chain:
        raise TrustdError("this endpoint needs a client certificate (mTLS with an X.509-SVID)")
    return _spiffe_id_of(chain[0])


@functools.lru_cache(maxsize=4096)
def _spiffe_id_of(pem: str) -> str:
    """Parsed once per certificate, not per request: reading the certificate and its extensions was the largest
    single cost of an agent's SVID request (svid_mint). Keyed by the whole certificate, so a cached answer is the
    answer for exactly those bytes; a certificate that is refused raises each time (nothing cached)."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise TrustdError("the client certificate has no SPIFFE ID") from None
    except ValueError as exc:  # OpenSSL verified it, but cryptography cannot read it (e.g. a malformed extension)
        raise TrustdError(f"the client certificate cannot be read: {exc}") from exc
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise TrustdError("the client certificate must carry exactly one SPIFFE ID")
    return uris[0]
