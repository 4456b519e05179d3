"""Federation: the trust bundles of other trust domains (SPIRE's, another edgetrust hub's), fetched from their
SPIFFE bundle endpoints and handed to our workloads, so that a workload with our SVID and one with theirs can
authenticate each other.

Profile https_spiffe (SPIFFE Federation §5): the endpoint is authenticated by its X.509-SVID, which must chain to
the peer's bundle as we last knew it (bootstrapped once, out of band) and carry the configured SPIFFE ID; so a
bundle is only ever replaced by one its predecessor vouches for. What comes back is parsed strictly: a
truncated body, a key that is not what it claims, or a bundle of the wrong trust domain is refused, and the
bundle held before stays in force. Our own bundle is served at /v1/bundle in the same format.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509

from edgetrust._internal.bounded import BoundedReadError, aread_bounded
from edgetrust._internal.files import write_private
from edgetrust.spiffe.bundle import MAX_BUNDLE_BYTES, SpiffeBundle, SpiffeBundleError
from edgetrust.spiffe.bundle import parse_bundle as parse_spiffe_bundle
from edgetrust.spiffe.id import SpiffeId, TrustDomain
from trustd.errors import InvalidSpiffeIdError, TrustdError

log = logging.getLogger(__name__)
MIN_REFRESH_S, MAX_REFRESH_S = 5.0, 300.0


class FederationError(TrustdError):
    code = "federation_refused"


@dataclass(frozen=True, slots=True)
class Peer:
    trust_domain: str
    url: str
    endpoint_spiffe_id: str
    bootstrap: Path

    @classmethod
    def load_all(cls, path: Path) -> list[Peer]:
        raw = yaml.safe_load(path.read_text()) or {}
        peers = []
        for item in raw.get("federates_with") or []:
            try:
                peers.append(
                    cls(
                        str(item["trust_domain"]),
                        str(item["bundle_endpoint_url"]),
                        str(item["endpoint_spiffe_id"]),
                        (path.parent / str(item["bootstrap_bundle"])).resolve(),
                    )
                )
            except KeyError as exc:
                raise FederationError(f"{path}: a federates_with entry lacks {exc.args[0]!r}") from exc
            try:  # the trust domain names a file under the data directory: it must be a trust domain, exactly
                TrustDomain.parse(peers[-1].trust_domain)
                SpiffeId.parse(peers[-1].endpoint_spiffe_id)
            except InvalidSpiffeIdError as exc:
                raise FederationError(f"{path}: {exc.diagnostics()}") from exc
            if not peers[-1].url.startswith("https://"):
                raise FederationError(f"{path}: {peers[-1].trust_domain}'s bundle endpoint must be https://")
        return peers


def parse_bundle(trust_domain: str, body: bytes) -> SpiffeBundle:
    """A peer's SPIFFE bundle, strictly (edgetrust.spiffe.bundle): refused whole, never taken in part."""
    try:
        return parse_spiffe_bundle(trust_domain, body, limit=MAX_BUNDLE_BYTES)
    except SpiffeBundleError as exc:
        raise FederationError(str(exc)) from exc


class Federation:
    """Peers come from the federation file, read again when it changes: a peer is added without a restart."""

    def __init__(self, file: Path | None, directory: Path) -> None:
        self._file = file
        self._file_mtime: float | None = None
        self._peers: list[Peer] = []
        self._dir = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.bundles: dict[str, SpiffeBundle] = {}
        self.errors: dict[str, str] = {}
        self.reload()

    def reload(self) -> None:
        if self._file is None or not self._file.exists():
            return
        mtime = self._file.stat().st_mtime
        if mtime == self._file_mtime:
            return
        peers = Peer.load_all(self._file)
        bundles = {}
        for peer in peers:
            held = self._dir / f"{peer.trust_domain}.json"
            source = held if held.exists() else peer.bootstrap
            bundles[peer.trust_domain] = self.bundles.get(peer.trust_domain) or parse_bundle(
                peer.trust_domain, source.read_bytes()
            )
        self._peers, self.bundles, self._file_mtime = peers, bundles, mtime

    def jwks(self) -> dict[str, Mapping[str, Any]]:
        return {td: b.document for td, b in self.bundles.items()}

    async def refresh(self, peer: Peer) -> SpiffeBundle:
        current = self.bundles[peer.trust_domain]
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as roots:
            roots.write(current.x509_authorities_pem())
            roots.flush()
            context = ssl.create_default_context(cafile=roots.name)
        context.check_hostname = False  # https_spiffe: the server is named by its SPIFFE ID, checked below
        try:
            async with (
                httpx.AsyncClient(verify=context, timeout=10) as client,
                client.stream("GET", peer.url) as answer,
            ):
                served = _peer_spiffe_id(answer)
                # bounded as it streams (after decompression): a peer sending an endless body is cut off
                body = await aread_bounded(
                    answer.aiter_bytes(), f"{peer.trust_domain}'s bundle", limit=MAX_BUNDLE_BYTES
                )
        except BoundedReadError as exc:
            raise FederationError(str(exc)) from exc
        except (httpx.HTTPError, ssl.SSLError) as exc:
            raise FederationError(f"{peer.trust_domain}'s bundle endpoint failed: {exc}") from exc
        if served != peer.endpoint_spiffe_id:
            raise FederationError(f"{peer.url} is served by {served}, not {peer.endpoint_spiffe_id}")
        if answer.status_code != 200:
            raise FederationError(f"{peer.url} answered {answer.status_code}")
        bundle = parse_bundle(peer.trust_domain, body)
        write_private(self._dir / f"{peer.trust_domain}.json", body)
        self.bundles[peer.trust_domain] = bundle
        return bundle

    async def refresh_all(self) -> None:
        try:
            self.reload()
        except (FederationError, OSError, ValueError) as exc:
            log.warning("federation file not taken: %s", exc)
        for peer in self._peers:
            try:
                await self.refresh(peer)
                self.errors.pop(peer.trust_domain, None)
            except FederationError as exc:
                self.errors[peer.trust_domain] = exc.diagnostics()
                log.warning("federated bundle of %s kept as it was: %s", peer.trust_domain, exc.diagnostics())

    async def watch(self) -> None:
        """Each bundle again at its refresh hint (5 s to 5 min); a changed federation file is read, and its peers
        fetched, within MIN_REFRESH_S: a peer is added without a restart, and without waiting out a hint."""
        while True:
            try:
                await self.refresh_all()
            except Exception:  # whatever a peer sent: keep the bundles held, keep watching
                log.exception("federation: refresh failed; the bundles held stay in force")
            seen = self._file_stamp()
            hints = [b.refresh_hint for b in self.bundles.values()] or [MAX_REFRESH_S]
            due = time.monotonic() + min(MAX_REFRESH_S, max(MIN_REFRESH_S, min(hints)))
            while (left := due - time.monotonic()) > 0 and self._file_stamp() == seen:
                await asyncio.sleep(min(MIN_REFRESH_S, left))

    def _file_stamp(self) -> float | None:
        try:
            return self._file.stat().st_mtime if self._file is not None else None
        except OSError:
            return None


def _peer_spiffe_id(answer: httpx.Response) -> str:
    stream = answer.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise FederationError("the bundle endpoint presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise FederationError("the bundle endpoint's certificate is not an X.509-SVID")
    return str(uris[0])
