"""The CA's keys and certificates on disk, in slots (SPIRE's CA manager keeps them the same way).

The current slot is the CA directory itself: `ca.key` + `ca.crt` (+ `chain.pem` when the CA is an intermediate
under an upstream root) and `jwt.key` for JWT-SVIDs. The next slot is `<ca>/next/` (the same files plus
`prepared_at`); each retired slot is `<ca>/retired/<serial>/` with the old certificate, the old JWT *public*
key and `until`, the time its last SVID expires. Every file is written 0600, atomically; a key file that group
or others can read is refused, and so is a key that does not belong to its certificate or a certificate that
names another trust domain.

This module only reads and writes; what to sign is `authority`'s, when to move between slots `rotation`'s.
"""

from __future__ import annotations

import shutil
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetrust._internal import files
from edgetrust._internal.files import write_private
from edgetrust.spiffe.id import TrustDomain
from trustd.errors import CAConfigError

#: tolerate devices whose clocks run a little behind the hub's
CLOCK_SKEW = timedelta(seconds=30)
DEFAULT_CA_TTL = timedelta(days=365)
NEXT = "next"
RETIRED = "retired"
#: a CA certificate signs certificates (and CRLs) and nothing else (RFC 5280 §4.2.1.3)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True, slots=True)
class CAKeys:
    """What one slot holds: what the authority signs with."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    #: upstream certificates above ours; the last one is the root when we are an intermediate
    chain: tuple[x509.Certificate, ...]
    jwt_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Published:
    """Authorities in the bundle beside the signing CA: the prepared next one and the retired ones still needed."""

    certificates: tuple[x509.Certificate, ...]
    jwt_keys: tuple[ec.EllipticCurvePublicKey, ...]


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


def has_keys(directory: Path) -> bool:
    return (directory / "ca.crt").exists()


def root_certificate(
    key: ec.EllipticCurvePrivateKey, *, trust_domain: TrustDomain, ttl: timedelta = DEFAULT_CA_TTL
) -> x509.Certificate:
    """The self-signed root certificate of `key` for the trust domain (the key may live on a token)."""
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} root CA"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def create_root(directory: Path, *, trust_domain: TrustDomain, ttl: timedelta = DEFAULT_CA_TTL) -> None:
    """A new slot: a P-256 CA key, its self-signed root certificate for the trust domain, and a JWT key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = root_certificate(key, trust_domain=trust_domain, ttl=ttl)
    write_private_key(directory / "ca.key", key)
    write_private_key(directory / "jwt.key", ec.generate_private_key(ec.SECP256R1()))
    # the certificate last: its presence is what says the slot is complete
    write_private(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def load_keys(directory: Path, *, trust_domain: TrustDomain) -> CAKeys:
    """The slot in `directory`, checked: modes, the key belongs to the certificate, the trust domain matches."""
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
    check_trust_domain(cert, trust_domain)
    return CAKeys(key=key, certificate=cert, chain=tuple(chain), jwt_key=jwt_key)


def check_trust_domain(cert: x509.Certificate, trust_domain: TrustDomain) -> None:
    """A CA certificate that names another trust domain is refused (a token or directory of another domain)."""
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    if uris and uris != [str(trust_domain.id)]:
        raise CAConfigError(f"the CA certificate names {uris}, not the trust domain {trust_domain.id}")


# -- the next slot -----------------------------------------------------------------------------------------------
def mark_prepared(directory: Path, at: float) -> None:
    write_private(directory / NEXT / "prepared_at", str(at).encode())


def prepared_at(directory: Path) -> float:
    return float((directory / NEXT / "prepared_at").read_text())


def promote_next(directory: Path) -> None:
    """The next slot's keys and certificate become the current ones; the current private keys are overwritten."""
    nxt = directory / NEXT
    for name in ("ca.key", "jwt.key", "ca.crt"):
        files.replace(nxt / name, directory / name)  # renamed, then the directory fsynced: a power cut keeps a pair
    shutil.rmtree(nxt)


# -- retired slots ---------------------------------------------------------------------------------------------
def retire_current(directory: Path, *, until: float) -> None:
    """Keep the current certificate and JWT public key (never the private keys) in `retired/<serial>/`."""
    old = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    retired = directory / RETIRED / f"{old.serial_number:x}"
    retired.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(retired / "ca.crt", (directory / "ca.crt").read_bytes())
    jwt_public = read_private_key(directory / "jwt.key").public_key()
    write_private(
        retired / "jwt.pub",
        jwt_public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    write_private(retired / "until", str(until).encode())


def published(directory: Path, *, now: float | None = None) -> Published:
    """The next slot's authorities and those of the retired slots still needed; a retired slot whose last SVID
    has expired is deleted here, so nothing it signed can be presented any more."""
    now = time.time() if now is None else now
    certificates: list[x509.Certificate] = []
    jwt_keys: list[ec.EllipticCurvePublicKey] = []
    nxt = directory / NEXT
    if (nxt / "ca.crt").exists():
        certificates.append(x509.load_pem_x509_certificate((nxt / "ca.crt").read_bytes()))
        key = serialization.load_pem_private_key((nxt / "jwt.key").read_bytes(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            jwt_keys.append(key.public_key())
    for retired in sorted((directory / RETIRED).glob("*")) if (directory / RETIRED).is_dir() else []:
        if float((retired / "until").read_text()) < now:
            shutil.rmtree(retired)
            continue
        certificates.append(x509.load_pem_x509_certificate((retired / "ca.crt").read_bytes()))
        public = serialization.load_pem_public_key((retired / "jwt.pub").read_bytes())
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwt_keys.append(public)
    return Published(tuple(certificates), tuple(jwt_keys))


def fingerprint(directory: Path) -> tuple[float, ...]:
    """Changes whenever a slot does (a rotation step taken beside the running hub)."""
    paths = [directory / "ca.crt", directory / NEXT / "ca.crt", directory / RETIRED]
    return tuple(p.stat().st_mtime if p.exists() else 0.0 for p in paths)
