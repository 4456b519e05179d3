"""`trustd svid mint`: an X.509-SVID for a person or a pipeline (an operator, a publisher, a cluster), issued on
the hub machine by the hub's CA, as `spire-server x509 mint` does for SPIRE.

Nodes get their SVIDs only from TPM enrollment and workloads only from registration entries through an attested
node agent; so this command refuses every ID a node or a workload could hold (the rule is ReservedNames': the
naming template, the enrolled devices), the hub's own, other trust domains' and revoked ones, each with its
reason, before anything is issued or written. Each mint is recorded in the hub's store (its SVIDs and its audit
log), in the same transaction. The CA is made when the data directory has none yet, as `trustd bundle` does, so
the first operator can be minted before the hub ever ran; the hub may be running meanwhile.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from edgetrust._internal.cli import EXIT_OK, add_json

if TYPE_CHECKING:
    from edgetrust._internal.cli import Parser
    from edgetrust.spiffe.id import SpiffeId
    from trustd.server.ca import X509Svid
    from trustd.server.settings import TrustdSettings
    from trustd.server.store import Store

MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(days=30)
DEFAULT_TTL = "8h"
#: what minting is for: the namespaces of the identities the hub authorizes by name
MINTABLE = ("operator", "publisher", "cluster")
HUB_NAMESPACE = "trustd"

_HELP = """\
Mint an X.509-SVID for an operator (spiffe://TD/operator/NAME), a publisher (/publisher/NAME) or a cluster
(/cluster/NAME) with the hub's CA, on the hub machine (the hub may be running or not; the CA is made if the data
dir has none yet). Writes OUT/svid.pem (leaf and chain), OUT/svid.key and OUT/bundle.pem (the trust bundle's
X.509 roots, what --ca-bundle takes), all 0600 in a 0700 directory, and records the mint in the hub's audit log.
Refused (exit 1, nothing written): other trust domains, the hub's own ID and /trustd namespace, anything a node
could be (the naming template, an enrolled device), revoked IDs, and plain workload IDs: a workload gets its SVID
from a registration entry (trustctl fleet entry create) through the node agent, which attests the process and
rotates the key; a minted key file would skip both. Re-mint into the same OUT to rotate: the old SVID stays valid
until it expires; revoke it (trustctl fleet revoke) to end it sooner.
"""


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    from trustd.cli.serve_flags import TRUST_FLAGS, add_settings_flags

    svid = sub.add_parser("svid", help="X.509-SVIDs for operators, publishers and clusters")
    commands = svid.add_subparsers(dest="svid_command", required=True)
    mint = commands.add_parser(
        "mint", help="mint an operator's, publisher's or cluster's SVID with the hub's CA", description=_HELP
    )
    mint.add_argument("--spiffe-id", required=True, help="e.g. spiffe://retail.example/operator/alice")
    mint.add_argument(
        "--ttl",
        default=DEFAULT_TTL,
        metavar="DURATION",
        help=f"lifetime: 90s, 30m, 8h, 7d or seconds; 1m .. 30d, refused outside (default {DEFAULT_TTL})",
    )
    mint.add_argument(
        "--out",
        type=Path,
        help="directory for svid.pem, svid.key, bundle.pem (default: ./operator-alice for .../operator/alice)",
    )
    add_settings_flags(
        mint,
        ("data_dir", "trust_domain", "store_url", "spiffe_id_template", *TRUST_FLAGS[2:]),
    )
    add_json(mint)


@dataclass(frozen=True, slots=True)
class Minted:
    svid: X509Svid
    #: the SVID's private key (PKCS#8 PEM), made here: it never leaves this machine but in OUT/svid.key
    key_pem: bytes
    #: the trust bundle's X.509 roots (PEM)
    bundle_pem: bytes


def ttl_of(text: str) -> timedelta:
    """`--ttl` within MIN_TTL .. MAX_TTL: outside is refused, never clamped."""
    from edgetrust._internal.cli import UsageError
    from trustd.cli.serve_flags import parse_duration

    try:
        ttl = timedelta(seconds=parse_duration(text))
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--ttl: {exc}") from None
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise UsageError(f"--ttl {text}: give 1m .. 30d (a person or a pipeline re-mints; nothing is clamped)")
    return ttl


def refusal(spiffe_id: SpiffeId, settings: TrustdSettings, store: Store) -> str | None:
    """Why `spiffe_id` must not be minted, or None."""
    from edgetrust.spiffe.id import ReservedNames, TrustDomain

    trust_domain = TrustDomain.parse(settings.trust_domain)
    if spiffe_id.trust_domain != trust_domain:
        return f"{spiffe_id} is not in trust domain {trust_domain} (--trust-domain, TRUSTD_TRUST_DOMAIN)"
    segments = [s for s in spiffe_id.path.split("/") if s]
    if not segments:
        return f"{spiffe_id} is the trust domain itself, reserved to the hub"
    if segments[0] == HUB_NAMESPACE:
        return f"{spiffe_id} is the hub's own ID or namespace (/{HUB_NAMESPACE}); the hub issues its own"
    reserved = ReservedNames(trust_domain, node_template=settings.spiffe_id_template)
    reserved.check_template()  # a template that could name a node /operator/...: the hub would not start either
    for depth in range(1, len(segments) + 1):
        ancestor = f"spiffe://{trust_domain}/" + "/".join(segments[:depth])
        if store.device_by_spiffe_id(ancestor) is not None:
            return f"{spiffe_id} equals or sits under the enrolled node {ancestor}: a node's ID comes from its TPM only"
        revoked = store.revocation(ancestor)
        if revoked is not None:
            return f"{ancestor} was revoked by {revoked.revoked_by} ({revoked.reason}); mint another name"
    if segments[0] not in MINTABLE:
        node = reserved.reason(spiffe_id)
        if node is not None:
            return f"{node}: a node's ID comes from TPM enrollment only"
        return (
            f"{spiffe_id} is a workload ID: workloads get SVIDs from registration entries through the node agent "
            "(trustctl fleet entry create); mint /operator/..., /publisher/... or /cluster/..."
        )
    if len(segments) < 2:
        return f"{spiffe_id} is the /{segments[0]} namespace itself: name one, e.g. /{segments[0]}/alice"
    return None


def mint(settings: TrustdSettings, spiffe_id_text: str, ttl: timedelta) -> Minted:
    """Check, issue and record; when refused, nothing is issued (and no CA made)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from edgetrust.spiffe.id import SpiffeId, TrustDomain
    from trustd.errors import MintRefusedError
    from trustd.server.ca import material
    from trustd.server.store import AuditEvent, SvidRecord, open_store

    spiffe_id = SpiffeId.parse(spiffe_id_text)
    trust_domain = TrustDomain.parse(settings.trust_domain)
    if spiffe_id.trust_domain != trust_domain:  # before the store is opened: nothing is made for a stranger
        raise MintRefusedError(
            f"{spiffe_id} is not in trust domain {trust_domain} (--trust-domain, TRUSTD_TRUST_DOMAIN)"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = open_store(settings.effective_store_url)
    trust: material.TrustMaterial | None = None
    try:
        reason = refusal(spiffe_id, settings, store)
        if reason is not None:
            raise MintRefusedError(reason)
        trust = material.load(settings)  # none: refused, never a new root
        ca = trust.ca
        now = datetime.now(UTC)
        ca_until = ca.certificate.not_valid_after_utc
        if now + ttl > ca_until:
            raise MintRefusedError(
                f"--ttl {ttl} outlives the signing CA (valid until {ca_until:%Y-%m-%d %H:%M} UTC): ask for less, "
                "or rotate the CA first (trustd ca prepare, activate)"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        svid = ca.issue_x509_svid(csr, spiffe_id, ttl=ttl, now=now)
        serial = f"{svid.serial:x}"
        store.record_svid(
            SvidRecord(
                serial=serial,
                spiffe_id=str(spiffe_id),
                ek_fingerprint="",
                not_before=svid.certificate.not_valid_before_utc.timestamp(),
                not_after=svid.not_after.timestamp(),
                kind="x509-minted",
            ),
            AuditEvent(
                time.time(),
                "svid.mint",
                "issued",
                str(spiffe_id),
                {"serial": serial, "not_after": svid.not_after.isoformat(), "by": _who()},
            ),
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return Minted(svid, key_pem, ca.x509_authorities_pem())
    finally:
        store.close()
        if trust is not None:
            trust.close()


def _who() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (a container)
        name = "?"
    return f"uid {os.geteuid()} ({name})"


def write(minted: Minted, out: Path) -> tuple[Path, Path, Path]:
    """OUT/svid.pem, svid.key, bundle.pem: 0600 each, atomically, in a 0700 directory of this uid (a symlink
    or another uid's directory is refused: its owner could read or swap the key)."""
    from edgetrust._internal import files
    from trustd.errors import PrivateFileError

    try:
        directory = files.private_directory(out)
    except files.UnsafeDirectoryError as exc:
        raise PrivateFileError(f"--out {out}: {exc}") from None
    paths = directory / "svid.pem", directory / "svid.key", directory / "bundle.pem"
    try:
        # the key first: a crash in between leaves an old certificate beside a new key, refused by any TLS
        # client as a mismatch, never a certificate whose key is someone else's
        files.write_private(paths[1], minted.key_pem)
        files.write_private(paths[0], minted.svid.chain_pem())
        files.write_private(paths[2], minted.bundle_pem)
    except OSError as exc:
        raise PrivateFileError(f"--out {out}: cannot write: {exc}") from None
    return paths


def default_out(spiffe_id_text: str) -> Path:
    """./operator-alice for spiffe://TD/operator/alice."""
    path = spiffe_id_text.removeprefix("spiffe://").partition("/")[2]
    return Path("-".join(s for s in path.split("/") if s) or "svid")


def run(args: argparse.Namespace, settings: TrustdSettings) -> int:
    from edgetrust._internal.cli import UsageError
    from edgetrust.spiffe.id import SpiffeId
    from trustd.errors import InvalidSpiffeIdError

    ttl = ttl_of(args.ttl)
    try:
        SpiffeId.parse(args.spiffe_id)
    except InvalidSpiffeIdError as exc:
        raise UsageError(f"--spiffe-id: {exc}") from None
    minted = mint(settings, args.spiffe_id, ttl)
    certificate, key, bundle = write(minted, args.out or default_out(args.spiffe_id))
    view = {
        "spiffe_id": str(minted.svid.spiffe_id),
        "serial": f"{minted.svid.serial:x}",
        "not_after": minted.svid.not_after.isoformat(),
        "svid": str(certificate),
        "key": str(key),
        "bundle": str(bundle),
    }
    if args.json:
        print(json.dumps(view))
        return EXIT_OK
    print(f"{view['spiffe_id']}  (serial {view['serial']}, valid until {view['not_after']})")
    print(f"  --svid {certificate} --svid-key {key} --ca-bundle {bundle}")
    return EXIT_OK
