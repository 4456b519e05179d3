"""`trustctl`: the operator's and the device's command line.

Output is for people first (a sentence), `--json` for scripts. Exit codes: 0 ok, 1 refused (policy or
verification), 2 usage, 3 hub unreachable (edgetrust/_internal/cli.py). Subcommand modules are imported only
when their command runs (and to build the parser, each only with its parsing imports): a device's
`trustctl enroll` loads neither the hub's nor the policy tooling's dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from edgetrust._internal.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Parser,
    UsageError,
    add_hub,
    add_json,
    fail,
)

#: the commands whose modules are imported only when they run (`add_parser(sub, help)`, `run(args)`)
COMMANDS = {
    "policy": "policy-as-code: test, build, sign, publish, roll out",
    "fleet": "the fleet as the hub sees it: nodes, clusters, revocations",
    "agent": "the node agent: the SPIFFE Workload API for this node's workloads",
    "svid": "inspect X.509-SVIDs",
    "refvalues": "reference values: capture them from a golden device, check a boot against them",
}


def _module(command: str) -> ModuleType:
    """A command's module, imported now (import statements rather than names in strings: a move of the
    modules rewrites them with every other import)."""
    if command == "policy":
        from trustd.cli import policy as policy_cli

        return policy_cli
    if command == "fleet":
        from trustd.cli import fleet as fleet_cli

        return fleet_cli
    if command == "agent":
        from trustd.cli import agent as agent_cli

        return agent_cli
    if command == "refvalues":
        from trustd.cli import refvalues as refvalues_cli

        return refvalues_cli
    from trustd.cli import svid as svid_cli

    return svid_cli


def _claim(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _parser(command: str | None = None) -> Parser:
    """The whole parser, or (`command`) the enroll parser and that command's only: `trustctl enroll` does not
    import the modules of the other commands."""
    parser = Parser(prog="trustctl", description="edgetrust device and operator CLI")
    sub = parser.add_subparsers(dest="command", required=True)

    enroll = sub.add_parser("enroll", help="prove this device with its TPM and obtain its X.509-SVID")
    add_hub(enroll, aliases=["--server"], help="trustd URL, e.g. https://hub.example:8443")
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
    enroll.add_argument(
        "-v", "--verbose", action="store_true", help="say each step, the TPM's EK-certificate probes included"
    )
    add_json(enroll)
    for name, text in COMMANDS.items():
        if command is None or command == name:
            _module(name).add_parser(sub, text)
        else:  # another command than the one run: listed, its module not loaded
            sub.add_parser(name, help=text)
    return parser


_KERNEL_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")


def _enroll(args: argparse.Namespace) -> int:
    from edgetrust._internal import logs
    from trustd.agent.enroll_client import enroll

    if args.verbose:
        logs.configure(verbose=True)

    if not args.hub.startswith("https://"):
        raise UsageError(f"--hub {args.hub}: trustd is only reached over https://")
    if not args.ca_bundle.is_file():
        raise UsageError(f"--ca-bundle {args.ca_bundle} is not a file (get it from the operator: trustd bundle --pem)")
    claims = dict(args.claim)
    if args.site:
        claims["site"] = args.site
    if args.node:
        claims["node"] = args.node
    log_path: Path | None = args.event_log
    if log_path is None and _KERNEL_EVENT_LOG.is_file():
        log_path = _KERNEL_EVENT_LOG
    result = enroll(
        server=args.hub,
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
    from attestation.errors import AttestationError
    from edgetrust._internal.hubclient import HubCallError
    from trustd.errors import HubUnreachableError, TrustdError

    given = list(argv) if argv is not None else sys.argv[1:]
    command = given[0] if given and (given[0] == "enroll" or given[0] in COMMANDS) else None
    args = _parser(command).parse_args(given)
    prog = f"trustctl {args.command}"
    try:
        if args.command == "enroll":
            return _enroll(args)
        code: int = _module(args.command).run(args)
        return code
    except HubUnreachableError as exc:
        return fail(prog, exc.diagnostics(), EXIT_UNREACHABLE)
    except HubCallError as exc:
        return fail(prog, exc, exc.exit_code())
    except (TrustdError, AttestationError) as exc:
        return fail(prog, exc.diagnostics(), EXIT_REFUSED)
    except (UsageError, OSError) as exc:  # the command line, or a file it names, cannot be used
        return fail(prog, exc, EXIT_USAGE)


if __name__ == "__main__":
    raise SystemExit(main())
