"""The signing authority: X.509-SVIDs, JWT-SVIDs and the SPIFFE trust bundle, made with the keys it is handed.

What the CA signs is decided here, not by the CSR: one URI SAN (the SPIFFE ID), leaf constraints, a TTL capped
by the CA's own validity (SPIFFE X509-SVID §4-5). The keys come from a key-store slot (`keystore`), and are
taken again by `reload` after a rotation step (`rotation`); nothing here decides when to rotate. The bundle is
built by the shared SPIFFE bundle module (edgetrust.spiffe.bundle), JWT-SVIDs are checked by the shared
validator (edgetrust.spiffe.jwt_svid).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgetrust.spiffe.bundle import SpiffeBundleError, build_bundle, public_jwk
from edgetrust.spiffe.id import SpiffeId, TrustDomain
from edgetrust.spiffe.jwt_svid import JwtSvidError, validate_jwt_svid
from trustd.errors import CAConfigError, CSRError, JWTSVIDError
from trustd.server.ca import keystore
from trustd.server.ca.keystore import CLOCK_SKEW, DEFAULT_CA_TTL, Published

MIN_RSA_BITS = 2048
_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")])
#: JWT-SVIDs are issued with ES256 only; validation accepts no other algorithm
JWT_ALGORITHM = "ES256"


@dataclass(frozen=True, slots=True)
class X509Svid:
    spiffe_id: SpiffeId
    certificate: x509.Certificate
    #: leaf first, then the intermediates up to (not including) the root
    chain: tuple[x509.Certificate, ...]

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def _kid(key: ec.EllipticCurvePublicKey) -> str:
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(spki).digest()[:20]).decode().rstrip("=")


def _leaf_key_usage(*, key_encipherment: bool) -> x509.KeyUsage:
    """A leaf signs (TLS handshakes, JWTs) and, for RSA key transport only, enciphers keys; it never signs
    certificates (SPIFFE X509-SVID §4.3)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


class SpiffeCA:
    """Signs with the CA key, certificate and JWT key it is handed, and publishes them in the bundle beside the
    next and retired authorities it is handed (`published`). `load`, `load_or_create_root` and `reload` take
    all of them from a key-store directory."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        jwt_key: ec.EllipticCurvePrivateKey,
        published: Published | None = None,
        directory: Path | None = None,
    ) -> None:
        self._directory = directory
        self._set(trust_domain, key, certificate, chain, jwt_key, published or Published((), ()))

    def _set(
        self,
        trust_domain: TrustDomain,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        jwt_key: ec.EllipticCurvePrivateKey,
        published: Published,
    ) -> None:
        self.trust_domain = trust_domain
        self._published = published
        self._jwt_public = {_kid(k): k for k in published.jwt_keys}
        self._key = key
        self.certificate = certificate
        #: upstream certificates above ours; the last one is the root when we are an intermediate
        self._upstream = tuple(chain)
        self._jwt_key = jwt_key
        self._jwt_kid = _kid(jwt_key.public_key())
        self._jwt_public[self._jwt_kid] = jwt_key.public_key()
        #: the same keys as JWKs, for the JWT-SVID validator
        self._jwt_jwks = {kid: public_jwk(public) for kid, public in self._jwt_public.items()}
        self._hash = hashes.SHA256() if key.curve.key_size <= 256 else hashes.SHA384()
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._intermediates = (certificate, *self._upstream[:-1]) if self._upstream else ()

    @property
    def key_in_memory(self) -> bool:
        """Whether the CA key is one of `cryptography`'s own (in this process's memory); else it is a PKCS#11
        token's, and each signature is a call to the token (an HSM, perhaps across a network)."""
        return type(self._key).__module__.startswith("cryptography.")

    # -- construction from a key store -------------------------------------------------------------------
    @classmethod
    def load_or_create_root(
        cls, directory: Path, *, trust_domain: TrustDomain, ttl: timedelta = DEFAULT_CA_TTL
    ) -> SpiffeCA:
        if not keystore.has_keys(directory):
            keystore.create_root(directory, trust_domain=trust_domain, ttl=ttl)
        return cls.load(directory, trust_domain=trust_domain)

    @classmethod
    def load(cls, directory: Path, *, trust_domain: TrustDomain) -> SpiffeCA:
        keys = keystore.load_keys(directory, trust_domain=trust_domain)
        return cls(
            trust_domain=trust_domain,
            key=keys.key,
            certificate=keys.certificate,
            chain=keys.chain,
            jwt_key=keys.jwt_key,
            published=keystore.published(directory),
            directory=directory,
        )

    def reload(self) -> None:
        """Take a rotation (`trustd ca prepare` / `activate`) made while running; every holder sees it."""
        if self._directory is None:
            return
        keys = keystore.load_keys(self._directory, trust_domain=self.trust_domain)
        published = keystore.published(self._directory)
        self._set(self.trust_domain, keys.key, keys.certificate, keys.chain, keys.jwt_key, published)

    # -- X.509 -----------------------------------------------------------------------------------------------
    def _leaf(
        self,
        public_key: Any,
        san: list[x509.GeneralName],
        *,
        ttl: timedelta,
        now: datetime | None,
        eku: list[x509.ObjectIdentifier],
    ) -> x509.Certificate:
        now = now or datetime.now(UTC)
        not_after = min(now + ttl, self.certificate.not_valid_after_utc)
        key_encipherment = isinstance(public_key, rsa.RSAPublicKey)
        return (
            x509.CertificateBuilder()
            .subject_name(_SUBJECT)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(key_encipherment=key_encipherment), critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(self._key, self._hash)
        )

    def issue_x509_svid(
        self, csr: bytes, spiffe_id: SpiffeId, *, ttl: timedelta, now: datetime | None = None
    ) -> X509Svid:
        if spiffe_id.trust_domain != self.trust_domain:
            raise CSRError(f"{spiffe_id} is outside the trust domain {self.trust_domain}")
        request = _load_csr(csr)
        cert = self._leaf(
            request.public_key(),
            [x509.UniformResourceIdentifier(str(spiffe_id))],
            ttl=ttl,
            now=now,
            eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        return X509Svid(spiffe_id=spiffe_id, certificate=cert, chain=(cert, *self._intermediates))

    def issue_server_certificate(
        self,
        *,
        dns_names: Sequence[str],
        ip_addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
        spiffe_id: SpiffeId,
        ttl: timedelta,
    ) -> tuple[bytes, bytes]:
        """A key and certificate chain (PEM) for trustd's own TLS listener."""
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        san += [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(a) for a in ip_addresses]
        cert = self._leaf(key.public_key(), san, ttl=ttl, now=None, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *self._intermediates))
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return key_pem, chain

    def x509_authorities(self) -> tuple[x509.Certificate, ...]:
        """What relying parties trust: our root (or the upstream root when we are an intermediate), then the
        next CA once prepared and the retired ones whose SVIDs may still be presented."""
        own = (self._upstream[-1],) if self._upstream else (self.certificate,)
        return own + tuple(c for c in self._published.certificates if c not in own)

    def x509_authorities_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities())

    # -- JWT -------------------------------------------------------------------------------------------------
    def issue_jwt_svid(
        self, spiffe_id: SpiffeId, *, audience: Sequence[str], ttl: timedelta, now: datetime | None = None
    ) -> str:
        if not audience:
            raise JWTSVIDError("a JWT-SVID needs at least one audience")
        issued = now or datetime.now(UTC)
        claims = {"sub": str(spiffe_id), "aud": list(audience), "iat": issued, "exp": issued + ttl}
        return jwt.encode(claims, self._jwt_key, algorithm=JWT_ALGORITHM, headers={"kid": self._jwt_kid, "typ": "JWT"})

    def validate_jwt_svid(self, token: str, *, audience: str) -> SpiffeId:
        try:
            claims = validate_jwt_svid(token, self._jwt_jwks, audience=audience, algorithms=(JWT_ALGORITHM,))
        except JwtSvidError as exc:
            raise JWTSVIDError(str(exc)) from exc
        return SpiffeId.parse(str(claims["sub"]))

    # -- bundle ----------------------------------------------------------------------------------------------
    def bundle(self, *, sequence: int = 1, refresh_hint: int = 300) -> dict[str, Any]:
        """The SPIFFE bundle (SPIFFE Trust Domain and Bundle §4): a JWKS with x509-svid and jwt-svid keys."""
        try:
            return build_bundle(self.x509_authorities(), self._jwt_public, sequence=sequence, refresh_hint=refresh_hint)
        except SpiffeBundleError as exc:
            raise CAConfigError(str(exc)) from exc


def _load_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(data) if data.lstrip().startswith(b"-----BEGIN") else x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CSRError(f"the CSR does not parse: {exc}") from exc
    if not csr.is_signature_valid:
        raise CSRError("the CSR's self-signature is invalid")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size not in (256, 384):
            raise CSRError(f"CSR key on curve {key.curve.name} refused: use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CSRError(f"CSR RSA key of {key.key_size} bits refused: at least {MIN_RSA_BITS}")
    else:
        raise CSRError(f"CSR key type {type(key).__name__} refused: use ECDSA P-256/P-384 or RSA >= 2048")
    return csr
