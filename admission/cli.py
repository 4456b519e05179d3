"""`edgetrust-admission serve`: the webhook process (in the chart, beside its OPA sidecar)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from admission.errors import AdmissionError
from admission.server import serve
from admission.settings import AdmissionSettings
from edgetrust._internal import logs

#: arguments that are not AdmissionSettings fields
_NOT_SETTINGS = frozenset({"command", "log_format", "verbose"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgetrust-admission", description="edgetrust admission webhook")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve AdmissionReviews over HTTPS")
    logs.add_arguments(run)
    run.add_argument("--policy-dir", type=Path)
    run.add_argument("--gatekeeper-dir", type=Path, help="Gatekeeper ConstraintTemplates and Constraints (YAML)")
    run.add_argument("--bundle", type=Path, help="a signed policy bundle to take policies from (e.g. the syncer's)")
    run.add_argument("--bundle-key", action="append", dest="bundle_keys", metavar="ID=PEM", help="bundle signer key")
    run.add_argument("--listen-host")
    run.add_argument("--listen-port", type=int)
    run.add_argument("--tls-cert", type=Path)
    run.add_argument("--tls-key", type=Path)
    run.add_argument("--opa-port", type=int)
    run.add_argument("--registry-ca-file", type=Path)
    run.add_argument("--exempt-namespace", action="append", dest="exempt_namespaces")
    run.add_argument(
        "--unsafe-allow-empty-policy-set",
        action="store_true",
        default=None,
        help="start even with no policy at all, admitting everything (with a warning on every admitted review)",
    )
    args = parser.parse_args(argv)
    logs.configure_from(args)
    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    if "bundle_keys" in overrides:
        overrides["bundle_keys"] = tuple(overrides["bundle_keys"])
    if "exempt_namespaces" in overrides:
        overrides["exempt_namespaces"] = tuple(overrides["exempt_namespaces"])
    try:
        settings = AdmissionSettings(**overrides)
        serve(settings)
    except ValidationError as exc:
        logs.fail("edgetrust-admission", f"bad settings: {exc}")
        return 2
    except AdmissionError as exc:
        logs.fail("edgetrust-admission", exc.diagnostics())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
