"""`trustctl`: the operator's and the device's command line.

Output is for people first (a sentence), `--json` for scripts. Exit codes: 0 ok, 1 refused (policy or
verification), 2 usage, 3 hub unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from attestation.errors import AttestationError
from trustd import fleet_cli, policy_cli, svid_cli
from trustd.agent import cli as agent_cli
from trustd.errors import HubUnreachableError, TrustdError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _claim(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trustctl", description="edgetrust device and operator CLI")
    sub = parser.add_subparsers(dest="command", required=True)

    enroll = sub.add_parser("enroll", help="prove this device with its TPM and obtain its X.509-SVID")
    enroll.add_argument("--server", required=True, help="trustd URL, e.g. https://hub.example:8443")
    enroll.add_argument("--tpm", required=True, help="TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321")
    enroll.add_argument("--ca-bundle", type=Path, required=True, help="PEM roots that sign trustd's certificate")
    enroll.add_argument("--out", type=Path, default=Path("/var/lib/edgetrust/svid"), help="where to write the SVID")
    enroll.add_argument("--device-class", required=True, help="reference-value class, e.g. edge-gateway")
    enroll.add_argument("--site", help="shorthand for --claim site=...")
    enroll.add_argument("--node", help="shorthand for --claim node=...")
    enroll.add_argument("--claim", type=_claim, action="append", default=[], help="naming claim KEY=VALUE")
    enroll.add_argument("--ek", choices=["rsa", "ecc"], default="rsa", help="endorsement key type")
    enroll.add_argument(
        "--ak",
        choices=["ecc", "rsa", "rsapss", "rsa-sha1", "ecc-sha1"],
        default="ecc",
        help="attestation key type (the -sha1 ones only for legacy vTPMs, where the device class allows them)",
    )
    enroll.add_argument(
        "--event-log",
        type=Path,
        help="TCG boot event log to send (default: the kernel's, if readable)",
    )
    enroll.add_argument("--jwt-audience", action="append", default=[], help="also issue a JWT-SVID for this audience")
    enroll.add_argument("--json", action="store_true", help="machine-readable output")
    policy_cli.add_parser(sub)
    fleet_cli.add_parser(sub)
    agent_cli.add_parser(sub)
    svid_cli.add_parser(sub)
    return parser


_KERNEL_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")


def _enroll(args: argparse.Namespace) -> int:
    from trustd.enroll_client import enroll

    claims = dict(args.claim)
    if args.site:
        claims["site"] = args.site
    if args.node:
        claims["node"] = args.node
    log_path: Path | None = args.event_log
    if log_path is None and _KERNEL_EVENT_LOG.is_file():
        log_path = _KERNEL_EVENT_LOG
    result = enroll(
        server=args.server,
        tcti=args.tpm,
        out_dir=args.out,
        device_class=args.device_class,
        claims=claims,
        ca_bundle=args.ca_bundle,
        ek_kind=args.ek,
        ak_kind=args.ak,
        event_log=log_path.read_bytes() if log_path else None,
        jwt_audiences=tuple(args.jwt_audience),
    )
    expires = datetime.fromtimestamp(result.not_after, UTC)
    if args.json:
        print(
            json.dumps(
                {
                    "spiffe_id": result.spiffe_id,
                    "expires_at": expires.isoformat(),
                    "svid": str(result.svid_path),
                    "key": str(result.key_path),
                    "bundle": str(result.bundle_path),
                    "jwt_svids": dict(result.jwt_svids),
                }
            )
        )
    else:
        print(f"enrolled as {result.spiffe_id}")
        print(f"  X.509-SVID {result.svid_path} (key {result.key_path}), expires {expires:%Y-%m-%d %H:%M:%S} UTC")
        print(f"  trust bundle {result.bundle_path}")
        for audience in result.jwt_svids:
            print(f"  JWT-SVID issued for audience {audience}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "enroll":
            return _enroll(args)
        if args.command == "policy":
            return policy_cli.run(args)
        if args.command == "fleet":
            return fleet_cli.run(args)
        if args.command == "agent":
            return agent_cli.run(args)
        if args.command == "svid":
            return svid_cli.run(args)
    except HubUnreachableError as exc:
        print(f"trustctl: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (TrustdError, AttestationError) as exc:
        print(f"trustctl: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
