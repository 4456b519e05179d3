"""CA rotation without downtime: publish first, sign later, retire last (SPIRE's rotator decides the same way).

1. `trustd ca prepare`: a next CA (key, certificate, JWT key) is made in the key store's next slot. The hub
   publishes it in the trust bundle at once, but does not sign with it, so every relying party learns it
   before it meets an SVID it signed.
2. `trustd ca activate` (refused until the next CA has been published for `--min-published`, a few bundle
   refresh intervals): the next CA signs from now on. The old CA's private keys are deleted (it must never sign
   again); its certificate and JWT public key move to a retired slot and stay in the bundle until the last
   SVID it signed has expired (`--keep-for`, the longest SVID lifetime), then drop out (`keystore.published`).
3. The hub's watcher notices each step taken beside it and reloads its authority.

This module decides when; the key store holds the slots, the authority signs with what it is handed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from edgetrust.spiffe.id import TrustDomain
from trustd.errors import CAConfigError
from trustd.server.ca import keystore
from trustd.server.ca.authority import SpiffeCA

log = logging.getLogger(__name__)


def prepare(directory: Path, trust_domain: TrustDomain) -> x509.Certificate:
    nxt = directory / keystore.NEXT
    if keystore.has_keys(nxt):
        raise CAConfigError(f"a next CA is already prepared in {nxt}; activate it first")
    keystore.create_root(nxt, trust_domain=trust_domain)
    prepared = keystore.load_keys(nxt, trust_domain=trust_domain)
    keystore.mark_prepared(directory, time.time())
    return prepared.certificate


def activate(directory: Path, *, keep_for: timedelta, min_published: timedelta, now: float | None = None) -> None:
    now = time.time() if now is None else now
    if not keystore.has_keys(directory / keystore.NEXT):
        raise CAConfigError("no next CA is prepared: run `trustd ca prepare` and let it be published first")
    published_at = keystore.prepared_at(directory)
    if now - published_at < min_published.total_seconds():
        wait = min_published.total_seconds() - (now - published_at)
        raise CAConfigError(
            f"the next CA has been published for {now - published_at:.0f} s; wait {wait:.0f} s more so that every "
            "relying party has it before it signs"
        )
    keystore.retire_current(directory, until=now + keep_for.total_seconds())
    keystore.promote_next(directory)  # the old private keys are overwritten: gone


async def watch(ca: SpiffeCA, directory: Path, interval_s: float = 5.0) -> None:
    """Reload the CA when a rotation step was taken (by `trustd ca ...` beside the running hub)."""
    seen = keystore.fingerprint(directory)
    while True:
        await asyncio.sleep(interval_s)
        try:
            now = keystore.fingerprint(directory)
            if now != seen:
                ca.reload()
                seen = now
        except Exception:  # a step half-written, a file unreadable: keep watching, retry next tick
            log.exception("the CA rotation step in %s was not taken yet; retrying", directory)
