"""`trustctl svid show`: what an X.509-SVID on disk says, for a person (or `--json`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:
    from edgetrust._internal.cli import Parser


def add_parser(sub: argparse._SubParsersAction[Parser], help: str) -> None:
    from edgetrust._internal.cli import add_json

    svid = sub.add_parser("svid", help=help)
    commands = svid.add_subparsers(dest="svid_command", required=True)
    show = commands.add_parser("show", help="SPIFFE ID, validity, issuer and key of an SVID file")
    show.add_argument("path", nargs="?", type=Path, default=Path("/var/lib/edgetrust/svid/svid.pem"))
    add_json(show)


def run(args: argparse.Namespace) -> int:
    from edgetrust._internal.cli import EXIT_REFUSED, EXIT_USAGE, fail

    try:
        chain = x509.load_pem_x509_certificates(args.path.read_bytes())
    except OSError as exc:
        return fail("trustctl svid show", f"{args.path}: {exc}", EXIT_USAGE)
    except ValueError as exc:
        return fail("trustctl svid show", f"{args.path}: not PEM certificates: {exc}", EXIT_REFUSED)
    leaf = chain[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ids = names.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        ids = []
    try:
        if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            ids = []  # a CA certificate (the trust bundle) is not an SVID, though it names the trust domain
    except x509.ExtensionNotFound:
        pass
    left = leaf.not_valid_after_utc.timestamp() - time.time()
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    view: dict[str, object] = {
        "spiffe_id": ids[0] if len(ids) == 1 else None,
        "serial": f"{leaf.serial_number:x}",
        "not_before": leaf.not_valid_before_utc.isoformat(),
        "not_after": leaf.not_valid_after_utc.isoformat(),
        "expires_in_s": int(left),
        "issuer": leaf.issuer.rfc4514_string(),
        "chain_length": len(chain),
        "fingerprint_sha256": fingerprint,
    }
    if args.json:
        print(json.dumps(view))
        return 0 if view["spiffe_id"] else 1
    if view["spiffe_id"] is None:
        message = f"{args.path}: not an X.509-SVID (a leaf with exactly one spiffe:// URI)"
        return fail("trustctl svid show", message, EXIT_REFUSED)
    state = "EXPIRED" if left <= 0 else f"expires in {int(left) // 3600}h{int(left) % 3600 // 60:02d}m"
    print(f"{view['spiffe_id']}")
    print(f"  serial {view['serial']}, valid {view['not_before']} .. {view['not_after']} ({state})")
    print(f"  issued by {view['issuer']}; chain of {len(chain)}; SHA-256 {fingerprint[:32]}…")
    return 0
