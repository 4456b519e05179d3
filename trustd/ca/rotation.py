"""CA rotation without downtime: publish first, sign later, retire last.

1. `trustd ca prepare`: a next CA (key, certificate, JWT key) is made in `<ca>/next/`. The hub publishes it in the
   trust bundle at once, but does not sign with it, so every relying party learns it before it meets an SVID
   it signed.
2. `trustd ca activate` (refused until the next CA has been published for `--min-published`, a few bundle
   refresh intervals): the next CA signs from now on. The old CA's private keys are deleted (it must never sign
   again); its certificate and JWT public key move to `<ca>/retired/<serial>/` and stay in the bundle until
   the last SVID it signed has expired (`--keep-for`, the longest SVID lifetime), then drop out.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustd.errors import CAConfigError
from trustd.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from trustd.ca import SpiffeCA


@dataclass(frozen=True, slots=True)
class Published:
    """Authorities in the bundle beside the signing CA: the prepared next one and the retired ones still needed."""

    certificates: tuple[x509.Certificate, ...]
    jwt_keys: tuple[ec.EllipticCurvePublicKey, ...]


def prepare(directory: Path, trust_domain: TrustDomain) -> x509.Certificate:
    from trustd.ca import SpiffeCA

    if (directory / "next" / "ca.crt").exists():
        raise CAConfigError(f"a next CA is already prepared in {directory / 'next'}; activate it first")
    prepared = SpiffeCA.load_or_create_root(directory / "next", trust_domain=trust_domain)
    (directory / "next" / "prepared_at").write_text(str(time.time()))
    return prepared.certificate


def activate(directory: Path, *, keep_for: timedelta, min_published: timedelta, now: float | None = None) -> None:
    now = time.time() if now is None else now
    nxt = directory / "next"
    if not (nxt / "ca.crt").exists():
        raise CAConfigError("no next CA is prepared: run `trustd ca prepare` and let it be published first")
    published_at = float((nxt / "prepared_at").read_text())
    if now - published_at < min_published.total_seconds():
        wait = min_published.total_seconds() - (now - published_at)
        raise CAConfigError(
            f"the next CA has been published for {now - published_at:.0f} s; wait {wait:.0f} s more so that every "
            "relying party has it before it signs"
        )
    old = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    retired = directory / "retired" / f"{old.serial_number:x}"
    retired.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy(directory / "ca.crt", retired / "ca.crt")
    jwt_public = serialization.load_pem_private_key((directory / "jwt.key").read_bytes(), None).public_key()
    (retired / "jwt.pub").write_bytes(
        jwt_public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (retired / "until").write_text(str(now + keep_for.total_seconds()))
    for name in ("ca.key", "jwt.key", "ca.crt"):
        (nxt / name).replace(directory / name)  # the old private keys are overwritten: gone
    shutil.rmtree(nxt)


def _fingerprint(directory: Path) -> tuple[float, ...]:
    paths = [directory / "ca.crt", directory / "next" / "ca.crt", directory / "retired"]
    return tuple(p.stat().st_mtime if p.exists() else 0.0 for p in paths)


async def watch(ca: SpiffeCA, directory: Path, interval_s: float = 5.0) -> None:
    """Reload the CA when a rotation step was taken (by `trustd ca ...` beside the running hub)."""
    import asyncio

    seen = _fingerprint(directory)
    while True:
        await asyncio.sleep(interval_s)
        try:
            now = _fingerprint(directory)
            if now != seen:
                ca.reload()
                seen = now
        except Exception:  # a step half-written, a file unreadable: keep watching, retry next tick
            log.exception("the CA rotation step in %s was not taken yet; retrying", directory)


def published(directory: Path, *, now: float | None = None) -> Published:
    now = time.time() if now is None else now
    certificates: list[x509.Certificate] = []
    jwt_keys: list[ec.EllipticCurvePublicKey] = []
    nxt = directory / "next"
    if (nxt / "ca.crt").exists():
        certificates.append(x509.load_pem_x509_certificate((nxt / "ca.crt").read_bytes()))
        key = serialization.load_pem_private_key((nxt / "jwt.key").read_bytes(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            jwt_keys.append(key.public_key())
    for retired in sorted((directory / "retired").glob("*")) if (directory / "retired").is_dir() else []:
        if float((retired / "until").read_text()) < now:
            shutil.rmtree(retired)  # its last SVID has expired: nothing it signed can be presented any more
            continue
        certificates.append(x509.load_pem_x509_certificate((retired / "ca.crt").read_bytes()))
        public = serialization.load_pem_public_key((retired / "jwt.pub").read_bytes())
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwt_keys.append(public)
    return Published(tuple(certificates), tuple(jwt_keys))
