"""The hub's revocation list at the edge: verified like a policy bundle, never older than one held before,
kept on disk so a site cut off from the hub still refuses identities revoked before the cut.

In-cluster services that authenticate SPIFFE peers (mTLS) consult `RevocationList.check` after the chain
verifies: a revoked node's SVID is refused at once, though its certificate has hours left.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust._internal.files import write_public
from edgetrust.bundles.errors import BundleError, BundleFormatError, RollbackError
from edgetrust.bundles.format import ROOT, Bundle, unpack
from edgetrust.bundles.signing import verify_bundle

ROOTS = [f"{ROOT}/revocations"]
KEY_ID = "trustd-revocations"  # the key id the hub signs with (trustd/server/revocations.py)


class RevokedError(BundleError):
    code = "identity_revoked"


@dataclass(frozen=True, slots=True)
class RevocationList:
    counter: int
    revision: str
    spiffe_ids: frozenset[str]
    nodes: frozenset[str]

    @classmethod
    def empty(cls) -> RevocationList:
        return cls(-1, "", frozenset(), frozenset())

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> RevocationList:
        if list(bundle.manifest.get("roots") or []) != ROOTS:
            raise BundleFormatError(f"a revocation bundle must have roots {ROOTS}, not {bundle.manifest.get('roots')}")
        data = bundle.revoked
        return cls(
            bundle.counter,
            bundle.revision,
            frozenset(data.get("spiffe_ids", [])),
            frozenset(data.get("nodes", [])),
        )

    def check(self, spiffe_id: str) -> None:
        if spiffe_id in self.spiffe_ids:
            raise RevokedError(f"{spiffe_id} is revoked (revocation list {self.revision})")

    def check_certificate(self, der: bytes) -> str:
        """The SPIFFE ID of an X.509-SVID whose chain already verified, unless it is revoked."""
        try:
            certificate = x509.load_der_x509_certificate(der)
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise RevokedError(f"peer certificate carries no SPIFFE ID: {exc}") from exc
        uris = [u for u in names.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
        if len(uris) != 1:
            raise RevokedError(f"an X.509-SVID has exactly one SPIFFE ID; this one has {len(uris)}")
        self.check(uris[0])
        return uris[0]

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "counter": self.counter,
                "revision": self.revision,
                "spiffe_ids": sorted(self.spiffe_ids),
                "nodes": sorted(self.nodes),
            },
            indent=1,
        ).encode()

    @classmethod
    def load_json(cls, path: Path) -> RevocationList:
        """What the agent wrote for in-cluster readers (`--revocations-out`)."""
        try:
            raw = json.loads(path.read_bytes())
            return cls(int(raw["counter"]), str(raw["revision"]), frozenset(raw["spiffe_ids"]), frozenset(raw["nodes"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"revocation list {path} is unreadable: {exc}") from exc


def verify_revocations(blob: bytes, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> tuple[RevocationList, Bundle]:
    bundle = unpack(blob)
    verify_bundle(bundle, keys)
    return RevocationList.from_bundle(bundle), bundle


class RevocationStore:
    """revocations.tar.gz (the signed bundle as received) and, optionally, a plain JSON copy for readers."""

    def __init__(self, directory: Path, keys: Mapping[str, ec.EllipticCurvePublicKey], out: Path | None = None):
        self._blob_path = directory / "revocations.tar.gz"
        self._etag_path = directory / "revocations.etag"
        self._keys = keys
        self._out = out
        self.current = RevocationList.empty()
        self.etag: str | None = None
        if self._blob_path.exists():
            # re-verified at start: the disk is not trusted more than the network
            self.current, _ = verify_revocations(self._blob_path.read_bytes(), keys)
            self.etag = self._etag_path.read_text() if self._etag_path.exists() else None

    @property
    def blob(self) -> bytes | None:
        """The signed list as received (None before the first), for relaying unchanged (syncer/nodestatus.py)."""
        try:
            return self._blob_path.read_bytes()
        except FileNotFoundError:
            return None

    def accept(self, blob: bytes, etag: str | None) -> RevocationList:
        found, _ = verify_revocations(blob, self._keys)
        if found.counter < self.current.counter:
            raise RollbackError(
                f"revocation list {found.revision} is older than the one held ({self.current.revision}): refused"
            )
        write_public(self._blob_path, blob)
        if etag:
            write_public(self._etag_path, etag.encode())
        if self._out is not None:
            write_public(self._out, found.as_json())
        self.current, self.etag = found, etag
        return found
