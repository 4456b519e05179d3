"""`edgetrust-admission serve`: the webhook process (in the chart, beside its OPA sidecar).

Exit codes: 0 stopped cleanly, 1 refused to start (a policy that does not load, a bundle that does not verify),
2 usage (the command line, or settings that do not validate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from admission.errors import AdmissionError
from admission.server import serve
from admission.settings import AdmissionSettings
from edgetrust._internal import logs
from edgetrust._internal.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Parser,
    UsageError,
    add_listen,
    add_verification_keys,
    fail,
    listen_of,
    verification_key_files,
)


def _parser() -> Parser:
    parser = Parser(prog="edgetrust-admission", description="edgetrust admission webhook")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve AdmissionReviews over HTTPS")
    logs.add_arguments(run)
    run.add_argument("--policy-dir", type=Path)
    run.add_argument(
        "--parameters",
        type=Path,
        metavar="FILE",
        help="the site's parameters file ({policy: {parameter: value}}, e.g. allowed_repos: {repos: [...]})",
    )
    run.add_argument("--gatekeeper-dir", type=Path, help="Gatekeeper ConstraintTemplates and Constraints (YAML)")
    run.add_argument("--bundle", type=Path, help="a signed policy bundle to take policies from (e.g. the syncer's)")
    add_verification_keys(run, aliases=["--bundle-key"], help="the bundle's signer key (with --bundle)")
    add_listen(run, default="127.0.0.1:8443", host_aliases=["--listen-host"], port_aliases=["--listen-port"])
    run.add_argument("--tls-cert", type=Path)
    run.add_argument("--tls-key", type=Path)
    run.add_argument("--opa-port", type=int)
    run.add_argument("--registry-ca-file", type=Path)
    run.add_argument("--registry-auth-file", type=Path, help="registry credentials (a Docker config.json)")
    run.add_argument("--exempt-namespace", action="append", dest="exempt_namespaces")
    run.add_argument(
        "--unsafe-allow-empty-policy-set",
        action="store_true",
        default=None,
        help="start even with no policy at all, admitting everything (with a warning on every admitted review)",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command line as settings (what it does not give comes from the environment, or the default)."""
    given = vars(args)
    skip = {"command", "listen", "listen_host", "listen_port", "verification_keys", "log_format", "verbose"}
    overrides: dict[str, Any] = {k: v for k, v in given.items() if k not in skip and v is not None}
    host, port = listen_of(args)
    if host is not None:
        overrides["listen_host"] = host
    if port is not None:
        overrides["listen_port"] = port
    if args.verification_keys:
        keys = verification_key_files(args.verification_keys)
        overrides["bundle_keys"] = tuple(f"{key_id}={path}" for key_id, path in keys.items())
    if "exempt_namespaces" in overrides:
        overrides["exempt_namespaces"] = tuple(args.exempt_namespaces)
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure_from(args)
    try:
        settings = AdmissionSettings(**_overrides(args))
        serve(settings)
    except ValidationError as exc:
        return fail("edgetrust-admission", f"bad settings: {exc}", EXIT_USAGE)
    except UsageError as exc:
        return fail("edgetrust-admission", exc, EXIT_USAGE)
    except AdmissionError as exc:
        return fail("edgetrust-admission", exc.diagnostics(), EXIT_REFUSED)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
