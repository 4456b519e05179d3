"""The hub's revocation list, and the signed OPA bundle that carries it to every cluster.

A revoked identity must stop working at the edge before its SVID expires, including at sites the hub cannot
reach at that moment: so the list travels like policy, as a signed, revisioned bundle that clusters keep on
disk. It is its own bundle (root `edgetrust/revocations`), signed by the hub's revocation key rather than by
the policy pipeline: revoking is the hub's authority (it issued the SVIDs), and the hub still never signs
policy. OPA loads it beside the policy bundle, since their roots are disjoint.

The list only grows; its counter is the store's sequence of the newest revocation, so a cluster can refuse an
older list exactly as it refuses an older policy bundle. Each replica rebuilds it when the store's sequence
moves, looked up at most once a second, so two hubs on one database serve the same list.

While the server runs, `watch` does that look, off the event loop for a store that waits on the network, and
requests only read what it found: a request never waits on the store for the list. When a look fails (the
store is away), the list is not known to be current, and what needs it answers 503 (StoreError) until a look
succeeds again; the authorization layer has the next request look first (`refresh`), so the hub serves again
as soon as the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust._internal.files import write_private
from edgetrust.bundles.format import MANIFEST, pack
from edgetrust.bundles.revocations import KEY_ID, ROOTS
from edgetrust.bundles.signing import SigningKey, sign_files
from edgetrust.spiffe.id import SpiffeId, TrustDomain
from trustd.errors import BadRequestError, CAConfigError, StoreError, TrustdError
from trustd.server.store import AuditEvent, DeviceRecord, RevocationRecord, Store, off_loop
from trustd.server.store.base import REVOCATIONS_CHANNEL

log = logging.getLogger(__name__)
REVOCATIONS_ROOT = ROOTS[0]
REFRESH_S = 1.0


class RevocationError(BadRequestError):
    code = "revocation_refused"


@dataclass(frozen=True, slots=True)
class SignedList:
    counter: int
    spiffe_ids: frozenset[str]
    blob: bytes
    etag: str


def has_key(directory: Path) -> bool:
    return (directory / "signing.key").exists()


def create_key(directory: Path) -> SigningKey:
    """A new revocation-signing key (0600) in `directory` (`trustd ca init`); refused if one is there."""
    path = directory / "signing.key"
    if path.exists():
        raise CAConfigError(f"{path} exists: a revocation key is never replaced in place")
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(
        path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return load_key(directory)


def load_key(directory: Path) -> SigningKey:
    """The hub's revocation-signing key (0600); its public half goes to clusters with their configuration."""
    path = directory / "signing.key"
    if not path.exists():
        raise CAConfigError(f"no revocation key at {path}: run `trustd ca init` once")
    signing = SigningKey.from_pem(KEY_ID, path.read_bytes())
    public = signing.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / f"{KEY_ID}.pem").write_bytes(public)
    return signing


def load_or_create_key(directory: Path) -> SigningKey:
    """For tests and tools that make a throwaway hub: the key in `directory`, created when absent. A hub never
    calls this (trustd.server.ca.material refuses to start without trust material)."""
    return load_key(directory) if has_key(directory) else create_key(directory)


class Revocations:
    def __init__(
        self, store: Store, key: SigningKey, trust_domain: TrustDomain, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._key = key
        self._trust_domain = trust_domain
        self._clock = clock
        self._listeners: list[Callable[[], None]] = []
        self._checked = 0.0
        self._current = self._build(store.revocations())
        self._watched = False
        #: why the last look at the store failed ("" while it succeeds)
        self._failure = ""
        self._looking: asyncio.Future[None] | None = None

    @property
    def public_key_pem(self) -> bytes:
        return self._key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def signing_key(self) -> SigningKey:
        """The hub's revocation key, which also signs the clusters' node attestation documents (nodestatus.py)."""
        return self._key

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def current(self) -> SignedList:
        """The signed list, rebuilt when another replica (or this one) revoked something since."""
        if self._watched:  # `watch` looks at the store; here only what it found
            if self._failure:
                raise StoreError(f"the revocation list cannot be confirmed current: {self._failure}")
            return self._current
        now = time.monotonic()
        if now - self._checked >= REFRESH_S:
            self._checked = now
            moved = self._moved()
            if moved is not None:
                self._changed(moved)
        return self._current

    def _moved(self) -> Sequence[RevocationRecord] | None:
        """One number each second; the whole list only when it moved."""
        if self._store.revocation_counter() == self._current.counter:
            return None
        return self._store.revocations()

    @property
    def failing(self) -> bool:
        """The last look at the store failed: `refresh` before relying on the list."""
        return bool(self._failure)

    async def watch(self) -> None:
        """Notice revocations made through another replica, so this one's long polls wake within a second: at
        once on the store's notification (PostgreSQL LISTEN/NOTIFY), and each REFRESH_S in any case (a
        notification lost while the listener reconnected, or SQLite, which has none)."""
        self._watched = True
        loop = asyncio.get_running_loop()
        notified = asyncio.Event()

        def wake() -> None:  # on the store's listener thread
            loop.call_soon_threadsafe(notified.set)

        unsubscribe = self._store.subscribe(REVOCATIONS_CHANNEL, wake)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(notified.wait(), timeout=REFRESH_S)
                notified.clear()
                await self.refresh()
        finally:
            self._watched = False
            unsubscribe()

    async def refresh(self) -> None:
        """Look at the store now, off the event loop for a store that blocks; one look at a time, shared by
        all who wait for it. A failure is kept (see `current`), never raised: a watcher that dies never comes
        back."""
        if self._looking is None:
            self._looking = asyncio.ensure_future(self._look())
        await asyncio.shield(self._looking)

    async def _look(self) -> None:
        try:
            moved = await off_loop(self._store, self._moved)
        except Exception as exc:  # the store is away (a restart, an outage)
            if not self._failure:
                log.exception("revocations: the store could not be read; looking again each second")
            self._failure = exc.diagnostics() if isinstance(exc, TrustdError) else type(exc).__name__
        else:
            if moved is not None:
                self._changed(moved)  # on the loop: the listeners wake long polls
            if self._failure:
                log.warning("revocations: the store can be read again")
            self._failure = ""
        finally:
            self._looking = None

    def is_revoked(self, spiffe_id: str) -> bool:
        return spiffe_id in self.current().spiffe_ids

    def records(self) -> Sequence[RevocationRecord]:
        return self._store.revocations()

    def revoke(self, target: str, *, reason: str, by: str) -> RevocationRecord:
        """Revoke a SPIFFE ID, or a device named by its node claim or EK fingerprint (its TPM is barred too)."""
        spiffe_id, device = self._resolve(target)
        record = self._store.revoke(
            RevocationRecord(
                spiffe_id=spiffe_id,
                ek_fingerprint=device.ek_fingerprint if device else "",
                reason=reason[:500],
                revoked_by=by,
                revoked_at=self._clock(),
            ),
            AuditEvent(
                at=self._clock(),
                event="fleet.revoke",
                outcome="revoked",
                subject=spiffe_id,
                detail={"by": by, "reason": reason[:500]},
            ),
        )
        self._changed(self._store.revocations())
        return record

    def _resolve(self, target: str) -> tuple[str, DeviceRecord | None]:
        if target.startswith("spiffe://"):
            try:
                parsed = SpiffeId.parse(target)
            except TrustdError as exc:
                raise RevocationError(f"{target!r} is not a SPIFFE ID: {exc.diagnostics()}") from exc
            if parsed.trust_domain != self._trust_domain:
                raise RevocationError(f"{target} is not in trust domain {self._trust_domain}; it is not ours to revoke")
            return str(parsed), self._store.device_by_spiffe_id(str(parsed))
        wanted = target.lower()
        found = [
            d
            for d in self._store.devices()
            if d.claims.get("node") == target or (len(wanted) >= 16 and d.ek_fingerprint.startswith(wanted))
        ]
        if not found:
            raise RevocationError(f"no enrolled device is named {target!r} (by node or EK fingerprint)")
        if len(found) > 1:
            names = ", ".join(d.spiffe_id for d in found)
            raise RevocationError(f"{target!r} names {len(found)} devices ({names}); revoke one by its SPIFFE ID")
        return found[0].spiffe_id, found[0]

    def _changed(self, records: Sequence[RevocationRecord]) -> None:
        if (records[-1].sequence if records else 0) < self._current.counter:
            return  # a look overtaken by a newer one (a revocation here meanwhile): the list only grows
        self._current = self._build(records)
        for listener in self._listeners:
            listener()

    def _build(self, records: Sequence[RevocationRecord]) -> SignedList:
        counter = records[-1].sequence if records else 0
        data = {
            "spiffe_ids": sorted(r.spiffe_id for r in records),
            "nodes": sorted(r.ek_fingerprint for r in records if r.ek_fingerprint),
        }
        manifest = {
            "revision": f"{counter:012d}-revocations",
            "roots": [REVOCATIONS_ROOT],
            "metadata": {"counter": counter, "trust_domain": str(self._trust_domain)},
        }
        files = {
            MANIFEST: json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
            f"{REVOCATIONS_ROOT}/data.json": json.dumps(data, sort_keys=True, separators=(",", ":")).encode(),
        }
        blob = pack(sign_files(files, self._key))
        # from the content, not the blob: ECDSA signatures differ each time, and replicas must agree on the ETag
        etag = '"r' + hashlib.sha256(pack(files)).hexdigest()[:31] + '"'
        return SignedList(counter, frozenset(data["spiffe_ids"]), blob, etag)
