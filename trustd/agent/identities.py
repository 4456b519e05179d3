"""The identities this node serves: its registration entries, an X.509-SVID per entry (keys made here, only
CSRs leave the node), the trust bundle, and JWT-SVIDs on demand. Renewed at half their lifetime, with jitter,
so that a fleet's agents do not all come back at once; served from memory while the hub is unreachable, until
they expire.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetrust._internal import hubclient
from edgetrust._internal.hubclient import HubCallError
from edgetrust._internal.retry import Backoff
from edgetrust.spiffe.bundle import SpiffeBundleError, parse_bundle_document
from trustd.errors import HubUnreachableError, TrustdError

log = logging.getLogger("edgetrust.agent")

ENTRY_POLL_S = 30.0
JITTER = 0.1  # renew between 45 % and 55 % of the lifetime


class AgentError(TrustdError):
    code = "agent_error"


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    spiffe_id: str
    selectors: frozenset[str]
    ttl_s: int


@dataclass(frozen=True, slots=True)
class Issued:
    entry: Entry
    key_der: bytes  # PKCS#8
    chain_der: tuple[bytes, ...]
    not_before: float
    not_after: float

    def renew_at(self, jitter: float) -> float:
        return self.not_before + (self.not_after - self.not_before) * (0.5 + jitter)


@dataclass(slots=True)
class Snapshot:
    """What the Workload API serves; replaced whole on every change, so a reader never sees half an update."""

    version: int = 0
    trust_domain: str = ""
    issued: dict[str, Issued] = field(default_factory=dict)  # entry id -> SVID
    authorities_der: tuple[bytes, ...] = ()
    jwt_keys: tuple[dict[str, Any], ...] = ()
    #: federated trust domains: name -> (X.509 authorities, JWT keys)
    federated: dict[str, tuple[tuple[bytes, ...], tuple[dict[str, Any], ...]]] = field(default_factory=dict)


class HubClient:
    """mTLS to trustd with the node's X.509-SVID (written by `trustctl enroll`)."""

    def __init__(self, hub: str, svid_dir: Path) -> None:
        self._hub = hub
        self._svid_dir = svid_dir
        self._http = self._client()

    def _client(self) -> httpx.AsyncClient:
        try:
            return hubclient.async_client(self._hub, hubclient.svid_context(self._svid_dir), timeout_s=15)
        except HubCallError as exc:
            raise AgentError(str(exc)) from exc

    async def reload(self) -> None:
        """Speak with the renewed node SVID from now on."""
        old, self._http = self._http, self._client()
        await old.aclose()

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Unreachable or unavailable (nothing was decided: keep what is held and retry) is HubUnreachableError;
        a refusal or an answer that is not the protocol AgentError."""
        try:
            return await hubclient.acall(self._http, method, path, json=body, action=path)
        except HubCallError as exc:
            raise exc.convert(unreachable=HubUnreachableError, otherwise=AgentError) from exc

    async def close(self) -> None:
        await self._http.aclose()


class Identities:
    def __init__(
        self, hub: HubClient, *, clock: Callable[[], float] = time.time, entry_poll_s: float = ENTRY_POLL_S
    ) -> None:
        self._hub = hub
        self._entry_poll = entry_poll_s
        self._clock = clock
        self.snapshot = Snapshot()
        self._changed = asyncio.Condition()
        self._jitter: dict[str, float] = {}
        self._jwt: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}
        self.last_contact: float | None = None
        self.last_error: str | None = None

    async def wait_for_change(self, version: int) -> Snapshot:
        async with self._changed:
            await self._changed.wait_for(lambda: self.snapshot.version != version)
            return self.snapshot

    async def _publish(self, snapshot: Snapshot) -> None:
        async with self._changed:
            snapshot.version = self.snapshot.version + 1
            self.snapshot = snapshot
            self._changed.notify_all()

    async def refresh(self) -> None:
        """Entries and bundle from the hub; new SVIDs for new entries and for those past their renewal time."""
        answer = await self._hub.call("GET", "/v1/agent/entries")
        self.last_contact = self._clock()
        entries = {
            e["id"]: Entry(e["id"], e["spiffe_id"], frozenset(e["selectors"]), int(e["ttl_s"]))
            for e in answer["entries"]
        }
        authorities, jwt_keys = _split_bundle(str(answer["trust_domain"]), answer["bundle"])
        federated = {str(td): _split_bundle(str(td), b) for td, b in (answer.get("federated") or {}).items()}
        now = self._clock()
        current = self.snapshot
        keep = {
            i: s
            for i, s in current.issued.items()
            if i in entries and s.entry == entries[i] and now < s.renew_at(self._jitter.setdefault(i, _jitter()))
        }
        due = [entries[i] for i in entries if i not in keep]
        fresh = await self._issue(due) if due else {}
        changed = bool(due) or set(keep) != set(current.issued) or authorities != current.authorities_der
        changed = changed or jwt_keys != current.jwt_keys or federated != current.federated
        if changed:
            await self._publish(
                Snapshot(
                    trust_domain=str(answer["trust_domain"]),
                    issued={**keep, **fresh},
                    authorities_der=authorities,
                    jwt_keys=jwt_keys,
                    federated=federated,
                )
            )
        self.last_error = None

    async def _issue(self, entries: Sequence[Entry]) -> dict[str, Issued]:
        keys = {e.id: ec.generate_private_key(ec.SECP256R1()) for e in entries}
        requests = [{"entry_id": e.id, "csr": _csr(keys[e.id])} for e in entries]
        answer = await self._hub.call("POST", "/v1/agent/svids", {"requests": requests})
        issued = {}
        by_id = {e.id: e for e in entries}
        for item in answer["svids"]:
            chain = x509.load_pem_x509_certificates(item["chain"].encode())
            self._jitter[item["entry_id"]] = _jitter()
            issued[item["entry_id"]] = Issued(
                entry=by_id[item["entry_id"]],
                key_der=keys[item["entry_id"]].private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
                chain_der=tuple(c.public_bytes(serialization.Encoding.DER) for c in chain),
                not_before=chain[0].not_valid_before_utc.timestamp(),
                not_after=chain[0].not_valid_after_utc.timestamp(),
            )
        log.info("issued %d X.509-SVIDs: %s", len(issued), ", ".join(s.entry.spiffe_id for s in issued.values()))
        return issued

    async def jwt_svid(self, entry: Entry, audience: Sequence[str]) -> str:
        """Cached until half its lifetime: a workload asking every second does not reach the hub every second."""
        key = (entry.id, tuple(sorted(audience)))
        cached = self._jwt.get(key)
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        answer = await self._hub.call("POST", "/v1/agent/jwt", {"entry_id": entry.id, "audience": list(audience)})
        token = str(answer["token"])
        try:  # only to know how long to cache it: the workload's relying party verifies it
            claims = jwt.decode(token, options={"verify_signature": False})
            issued_at = float(claims.get("iat", self._clock()))
            half_life = (float(claims["exp"]) - issued_at) / 2
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            raise AgentError(f"the hub handed a JWT-SVID that does not parse: {exc}") from exc
        self._jwt[key] = (token, issued_at + half_life)
        return token

    def next_due(self) -> float:
        """Seconds until the next renewal or entry poll."""
        now = float(self._clock())
        due = [s.renew_at(self._jitter.get(i, 0.0)) - now for i, s in self.snapshot.issued.items()]
        return max(1.0, min([self._entry_poll, *due]))

    async def run(self) -> None:
        backoff = Backoff(base_s=1.0, cap_s=60.0)
        while True:
            try:
                await self.refresh()
                backoff.reset()
                await asyncio.sleep(self.next_due())
            except TrustdError as exc:
                self.last_error = exc.diagnostics()
                delay = backoff.next_delay(exc.retry_after if isinstance(exc, HubUnreachableError) else None)
                log.warning("keeping the identities held (%s); retrying in %.0f s", self.last_error, delay)
                await asyncio.sleep(delay)


def _jitter() -> float:
    return random.uniform(-JITTER / 2, JITTER / 2)  # noqa: S311 - spreading load, not a secret


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _split_bundle(trust_domain: str, document: Any) -> tuple[tuple[bytes, ...], tuple[dict[str, Any], ...]]:
    """The X.509 authorities (DER) and JWT keys of a bundle the hub handed us, parsed as federation parses a
    peer's (edgetrust.spiffe.bundle): a malformed one is refused and the identities held stay in force."""
    try:
        bundle = parse_bundle_document(trust_domain, document)
    except SpiffeBundleError as exc:
        raise AgentError(f"the hub handed a bundle that is not a SPIFFE bundle: {exc}") from exc
    return bundle.x509_authorities_der(), bundle.jwt_keys
