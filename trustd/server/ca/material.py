"""The hub's trust material, found or refused: the CA (X.509 and JWT keys) and the revocation-list key.

Two places hold it. With `pkcs11_module` set, a PKCS#11 token that every replica opens (the key never lies in a
file; docs/trust-across-replicas.md); without it, files under the data directory (one hub, its own volume, as
before). Either way a hub that finds none refuses to start: a replica that minted a root of its own would
issue SVIDs that no other replica's bundle trusts, and nobody would notice until devices failed to connect.
Trust material is created once, on purpose, by `trustd ca init`, which refuses to overwrite any.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from edgetrust._internal.files import write_public
from edgetrust.bundles.revocations import KEY_ID
from edgetrust.bundles.signing import SigningKey
from edgetrust.spiffe.id import TrustDomain
from trustd.errors import CAConfigError
from trustd.server.ca import keystore, pkcs11
from trustd.server.ca.authority import SpiffeCA
from trustd.server.ca.keystore import Published
from trustd.server.revocations import create_key, has_key, load_key
from trustd.server.settings import TrustdSettings

#: what a hub with no trust material is told to do
INIT_HINT = "run `trustd ca init` once for the trust domain (with the same --data-dir or PKCS#11 token)"


@dataclass(frozen=True, slots=True)
class TrustMaterial:
    ca: SpiffeCA
    revocation_key: SigningKey
    #: the open token session when the keys live on one; closed with the hub
    token: pkcs11.Token | None = None

    def close(self) -> None:
        if self.token is not None:
            self.token.close()


def token_config(settings: TrustdSettings) -> pkcs11.TokenConfig | None:
    if settings.pkcs11_module is None:
        return None
    if settings.pkcs11_pin_file is None:
        raise CAConfigError("pkcs11_module needs pkcs11_pin_file (--pkcs11-pin-file): the token's user PIN")
    try:
        mode = stat.S_IMODE(settings.pkcs11_pin_file.stat().st_mode)
        if mode & 0o007:  # group may read: a Secret volume with fsGroup is group-owned, others never
            raise CAConfigError(
                f"the PKCS#11 PIN file {settings.pkcs11_pin_file} is readable by others (mode {mode:o}): "
                f"chmod o-rwx {settings.pkcs11_pin_file} (the chart mounts it 0400)"
            )
        pin = settings.pkcs11_pin_file.read_text().strip()
    except OSError as exc:
        raise CAConfigError(f"cannot read the PKCS#11 PIN file {settings.pkcs11_pin_file}: {exc}") from exc
    return pkcs11.TokenConfig(module=settings.pkcs11_module, token_label=settings.pkcs11_token, pin=pin)


def load(settings: TrustdSettings) -> TrustMaterial:
    """The trust material, checked; `CAConfigError` when there is none (never a new root)."""
    trust_domain = TrustDomain.parse(settings.trust_domain)
    config = token_config(settings)
    if config is None:
        if not keystore.has_keys(settings.ca_dir) or not has_key(settings.revocations_dir):
            raise CAConfigError(f"no trust material in {settings.data_dir} (ca/, revocations/): {INIT_HINT}")
        return TrustMaterial(
            ca=SpiffeCA.load(settings.ca_dir, trust_domain=trust_domain),
            revocation_key=load_key(settings.revocations_dir),
        )
    token = pkcs11.Token(config)
    try:
        trust = _from_token(token, trust_domain)
        publish_revocation_key(trust.revocation_key, settings)
    except BaseException:
        token.close()
        raise
    return trust


def publish_revocation_key(key: SigningKey, settings: TrustdSettings) -> None:
    """The revocation key's public half beside the data directory, as with keys on disk: what clusters are
    configured with (`<data-dir>/revocations/trustd-revocations.pem`)."""
    settings.revocations_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    public = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_public(settings.revocations_dir / f"{KEY_ID}.pem", public)  # atomic: workers start together


def _from_token(token: pkcs11.Token, trust_domain: TrustDomain) -> TrustMaterial:
    certificate = token.certificate(pkcs11.CA_LABEL)
    missing = [
        label for label in (pkcs11.CA_LABEL, pkcs11.JWT_LABEL, pkcs11.REVOCATIONS_LABEL) if not token.has_key(label)
    ]
    if certificate is None or missing:
        what = ", ".join(missing + ([] if certificate is not None else [f"{pkcs11.CA_LABEL} certificate"]))
        raise CAConfigError(f"the token {token.config.token_label!r} holds no trust material ({what}): {INIT_HINT}")
    key = token.key(pkcs11.CA_LABEL)
    if certificate.public_key() != key.public_key():
        raise CAConfigError(f"the CA certificate on the token does not belong to its key {pkcs11.CA_LABEL!r}")
    ca = SpiffeCA(
        trust_domain=trust_domain,
        key=key,
        certificate=certificate,
        chain=(),
        jwt_key=token.key(pkcs11.JWT_LABEL),
        published=Published((), ()),
    )
    keystore.check_trust_domain(certificate, trust_domain)
    return TrustMaterial(ca=ca, revocation_key=SigningKey(KEY_ID, token.key(pkcs11.REVOCATIONS_LABEL)), token=token)


def init(settings: TrustdSettings, *, if_absent: bool = False) -> str:
    """Create the trust material (`trustd ca init`); refused when any exists, so no root is ever replaced. With
    `if_absent` (a chart's one-shot init), complete material already there is kept and reported, not an error;
    half of it is still refused."""
    trust_domain = TrustDomain.parse(settings.trust_domain)
    config = token_config(settings)
    if config is None:
        on_disk = [keystore.has_keys(settings.ca_dir), has_key(settings.revocations_dir)]
        if if_absent and all(on_disk):
            return f"{settings.data_dir} already holds the trust material for {trust_domain}: kept"
        if any(on_disk):
            raise CAConfigError(f"{settings.data_dir} already holds trust material: nothing was created")
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keystore.create_root(settings.ca_dir, trust_domain=trust_domain)
        create_key(settings.revocations_dir)
        return f"created the root CA and the revocation key for {trust_domain} in {settings.data_dir}"
    token = pkcs11.Token(config)
    try:
        present = [
            label for label in (pkcs11.CA_LABEL, pkcs11.JWT_LABEL, pkcs11.REVOCATIONS_LABEL) if token.has_key(label)
        ]
        has_certificate = token.certificate(pkcs11.CA_LABEL) is not None
        if if_absent and has_certificate and len(present) == 3:
            return f"the token {config.token_label!r} already holds the trust material: kept"
        if present or has_certificate:
            what = ", ".join(present) or "a CA certificate"
            raise CAConfigError(
                f"the token {config.token_label!r} already holds trust material ({what}): nothing was created"
            )
        key = token.generate_key(pkcs11.CA_LABEL)
        token.store_certificate(pkcs11.CA_LABEL, keystore.root_certificate(key, trust_domain=trust_domain))
        token.generate_key(pkcs11.JWT_LABEL)
        token.generate_key(pkcs11.REVOCATIONS_LABEL)
    finally:
        token.close()
    return f"created the root CA, the JWT key and the revocation key for {trust_domain} on token {config.token_label!r}"
