"""X.509-SVIDs for test actors (clusters, publishers), issued straight by a hub's CA and written as files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetrust.spiffe.id import SpiffeId
from trustd.server.ca import SpiffeCA


def issue_svid_files(
    ca: SpiffeCA, spiffe_id: str, directory: Path, *, ttl: timedelta = timedelta(hours=2)
) -> tuple[Path, Path]:
    """svid.pem (leaf and chain) and svid.key (0600) in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    svid = ca.issue_x509_svid(csr, SpiffeId.parse(spiffe_id), ttl=ttl)
    directory.mkdir(parents=True, exist_ok=True)
    certificate = directory / "svid.pem"
    certificate.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (svid.certificate, *svid.chain))
    )
    private = directory / "svid.key"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    return certificate, private
