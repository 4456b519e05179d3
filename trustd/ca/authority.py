"""The trust domain's certificate authority: X.509-SVIDs, JWT-SVIDs and the SPIFFE trust bundle.

Keys live in one directory: `ca.key` + `ca.crt` (+ `chain.pem` when the CA is an intermediate under an
upstream root) and `jwt.key` for JWT-SVIDs. Key files are created 0600 and refused when group or others can
read them. What the CA signs is decided here, not by the CSR: one URI SAN (the SPIFFE ID), leaf constraints,
a TTL capped by the CA's own validity (SPIFFE X509-SVID §4-5).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import stat
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

from trustd.ca_rotation import Published, published
from trustd.errors import CAConfigError, CSRError, JWTSVIDError
from trustd.files import write_private
from trustd.spiffe_id import SpiffeId, TrustDomain

#: tolerate devices whose clocks run a little behind the hub's
CLOCK_SKEW = timedelta(seconds=30)
DEFAULT_CA_TTL = timedelta(days=365)
MIN_RSA_BITS = 2048
_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")])


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


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_private(
        path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CAConfigError(f"{path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise CAConfigError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAConfigError(f"{path}: the CA key must be ECDSA (P-256 or P-384)")
    return key


def _kid(key: ec.EllipticCurvePublicKey) -> str:
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(spki).digest()[:20]).decode().rstrip("=")


def _b64url_int(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).decode().rstrip("=")


class SpiffeCA:
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
        self._hash = hashes.SHA256() if key.curve.key_size <= 256 else hashes.SHA384()
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._intermediates = (certificate, *self._upstream[:-1]) if self._upstream else ()

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def load_or_create_root(
        cls, directory: Path, *, trust_domain: TrustDomain, ttl: timedelta = DEFAULT_CA_TTL
    ) -> SpiffeCA:
        if (directory / "ca.crt").exists():
            return cls.load(directory, trust_domain=trust_domain)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} root CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        write_private_key(directory / "ca.key", key)
        write_private_key(directory / "jwt.key", ec.generate_private_key(ec.SECP256R1()))
        (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls.load(directory, trust_domain=trust_domain)

    @classmethod
    def load(cls, directory: Path, *, trust_domain: TrustDomain) -> SpiffeCA:
        try:
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            chain_path = directory / "chain.pem"
            chain = x509.load_pem_x509_certificates(chain_path.read_bytes()) if chain_path.exists() else []
        except (OSError, ValueError) as exc:
            raise CAConfigError(f"cannot load the CA certificate from {directory}: {exc}") from exc
        key = read_private_key(directory / "ca.key")
        jwt_path = directory / "jwt.key"
        if not jwt_path.exists():
            write_private_key(jwt_path, ec.generate_private_key(ec.SECP256R1()))
        jwt_key = read_private_key(jwt_path)
        if cert.public_key() != key.public_key():
            raise CAConfigError(f"{directory}/ca.key does not belong to {directory}/ca.crt")
        try:
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier
            )
        except x509.ExtensionNotFound:
            uris = []
        if uris and uris != [str(trust_domain.id)]:
            raise CAConfigError(f"the CA certificate names {uris}, not the trust domain {trust_domain.id}")
        return cls(
            trust_domain=trust_domain,
            key=key,
            certificate=cert,
            chain=chain,
            jwt_key=jwt_key,
            published=published(directory),
            directory=directory,
        )

    def reload(self) -> None:
        """Take a rotation (`trustd ca prepare` / `activate`) made while running; every holder sees it."""
        if self._directory is None:
            return
        fresh = SpiffeCA.load(self._directory, trust_domain=self.trust_domain)
        self._set(fresh.trust_domain, fresh._key, fresh.certificate, fresh._upstream, fresh._jwt_key, fresh._published)

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
            .add_extension(
                x509.KeyUsage(True, False, key_encipherment, False, False, False, False, False, False), critical=True
            )
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
        return jwt.encode(claims, self._jwt_key, algorithm="ES256", headers={"kid": self._jwt_kid, "typ": "JWT"})

    def validate_jwt_svid(self, token: str, *, audience: str) -> SpiffeId:
        try:
            header = jwt.get_unverified_header(token)
            public = self._jwt_public.get(str(header.get("kid")))
            if public is None:
                raise JWTSVIDError(f"JWT-SVID signed with unknown key id {header.get('kid')!r}")
            claims = jwt.decode(
                token,
                public,
                algorithms=["ES256"],
                audience=audience,
                options={"require": ["sub", "aud", "exp"]},
            )
        except jwt.PyJWTError as exc:
            raise JWTSVIDError(f"JWT-SVID rejected: {exc}") from exc
        return SpiffeId.parse(str(claims["sub"]))

    # -- bundle ----------------------------------------------------------------------------------------------
    def bundle(self, *, sequence: int = 1, refresh_hint: int = 300) -> dict[str, Any]:
        """The SPIFFE bundle (SPIFFE Trust Domain and Bundle §4): a JWKS with x509-svid and jwt-svid keys."""
        keys: list[dict[str, Any]] = []
        for cert in self.x509_authorities():
            entry = _ec_jwk(cert.public_key())
            entry.update(
                use="x509-svid", x5c=[base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
            )
            keys.append(entry)
        for kid, public in self._jwt_public.items():
            jwt_entry = _ec_jwk(public)
            jwt_entry.update(use="jwt-svid", kid=kid)
            keys.append(jwt_entry)
        return {"keys": keys, "spiffe_sequence": sequence, "spiffe_refresh_hint": refresh_hint}


def _ec_jwk(key: Any) -> dict[str, Any]:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CAConfigError("only EC CA keys are supported")
    size = (key.curve.key_size + 7) // 8
    numbers = key.public_numbers()
    crv = {256: "P-256", 384: "P-384", 521: "P-521"}[key.curve.key_size]
    return {"kty": "EC", "crv": crv, "x": _b64url_int(numbers.x, size), "y": _b64url_int(numbers.y, size)}


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
