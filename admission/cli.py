"""`edgetrust-admission serve`: the webhook process (in the chart, beside its OPA sidecar).

Exit codes: 0 stopped cleanly, 1 refused to start (a policy that does not load, a bundle that does not verify),
2 usage (the command line, or settings that do not validate), 3 OPA not answering within --opa-wait seconds.

Every refusal to start is one line on stderr saying what to do (with -v the traceback goes to the debug log).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from admission.errors import AdmissionError, OpaUnavailableError
from admission.rego.opa import wait_for_opa
from admission.server import serve
from admission.settings import AdmissionSettings
from edgetrust._internal import logs, serving
from edgetrust._internal.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Parser,
    UsageError,
    add_listen,
    add_verification_keys,
    fail,
    listen_of,
    verification_key_files,
)

log = logging.getLogger("edgetrust.admission")


def _parser() -> Parser:
    parser = Parser(prog="edgetrust-admission", description="edgetrust admission webhook")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve AdmissionReviews over HTTPS")
    logs.add_arguments(run)
    run.add_argument(
        "--policy-dir",
        type=Path,
        metavar="DIR",
        help="admission policies, one folder each (policy.yaml, Rego) (env ADMISSION_POLICY_DIR)",
    )
    run.add_argument(
        "--parameters",
        type=Path,
        metavar="FILE",
        help="the site's parameters file ({policy: {parameter: value}}, e.g. allowed_repos: {repos: [...]})",
    )
    run.add_argument("--gatekeeper-dir", type=Path, help="Gatekeeper ConstraintTemplates and Constraints (YAML)")
    run.add_argument(
        "--default-library",
        action="store_true",
        default=None,
        help="enforce the policy library shipped with edgetrust (policies/admission) instead of --policy-dir; "
        "policies that need a site's value (allowed_repos) are left out, with a warning, until --parameters sets it",
    )
    run.add_argument("--bundle", type=Path, help="a signed policy bundle to take policies from (e.g. the syncer's)")
    add_verification_keys(
        run, aliases=["--bundle-key"], help="the bundle's signer key (with --bundle or --follow-bundles)"
    )
    run.add_argument(
        "--follow-bundles",
        action="store_true",
        default=None,
        help="follow the bundles the syncer accepts (the ConfigMap edgetrust-admission-bundle), each verified "
        "here and swapped in without a restart; needs --bundle-key and --bundle-group",
    )
    run.add_argument("--bundle-group", metavar="GROUP", help="the cluster group followed bundles must be signed for")
    run.add_argument("--follow-namespace", metavar="NS", help="where the handoff ConfigMap is (edgetrust-system)")
    report = run.add_argument_group(
        "status reports",
        "with --hub, report what this replica enforces to the hub, as the cluster (its SVID from the Workload API)",
    )
    report.add_argument("--hub", metavar="URL", help="trustd's https:// URL; without it nothing is reported")
    report.add_argument("--ca-bundle", type=Path, metavar="PEM", help="the roots of the hub's serving certificate")
    report.add_argument(
        "--spiffe-socket",
        metavar="PATH",
        help="the Workload API socket the cluster's X.509-SVID comes from (default $SPIFFE_ENDPOINT_SOCKET)",
    )
    report.add_argument(
        "--svid", type=Path, metavar="PEM", help="the fallback without a node agent: an SVID file (nothing renews it)"
    )
    report.add_argument("--svid-key", type=Path, metavar="PEM", help="the --svid fallback's private key")
    report.add_argument("--pod-name", metavar="NAME", help="the name reported (default $POD_NAME, else the host name)")
    run.add_argument(
        "--node-attestation",
        action="store_true",
        default=None,
        help="refuse to bind pods (pods/binding, spec.nodeName) to nodes the hub's signed node attestation "
        "document (ConfigMap edgetrust-node-attestation, relayed by the syncer) does not show attested, fresh "
        "and unrevoked; needs --revocation-key and --cluster",
    )
    run.add_argument(
        "--revocation-key",
        type=Path,
        dest="node_attestation_key",
        metavar="PEM",
        help="the hub's revocation-signing public key, which signs the node attestation document and the "
        "revocation list (as the syncer's --revocation-key)",
    )
    run.add_argument("--cluster", metavar="NAME", help="this cluster's name in the fleet (for --node-attestation)")
    add_listen(run, default="127.0.0.1:8443", host_aliases=["--listen-host"], port_aliases=["--listen-port"])
    run.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="the serving certificate the API server trusts (caBundle)"
    )
    run.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key (0600)")
    run.add_argument("--opa-port", type=int, help="the OPA sidecar's port on --opa-host's loopback (default 8181)")
    run.add_argument(
        "--opa-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for OPA to answer at start, saying so every 5 s (a sidecar starts with the webhook); "
        "then exit 3 (default 30)",
    )
    run.add_argument("--registry-ca-file", type=Path, metavar="PEM", help="roots of the registries' TLS certificates")
    run.add_argument("--registry-auth-file", type=Path, help="registry credentials (a Docker config.json)")
    run.add_argument(
        "--exempt-namespace",
        action="append",
        dest="exempt_namespaces",
        metavar="NS",
        help="never checked, so a broken policy cannot lock it out; repeatable (default: kube-system)",
    )
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
    skip = {"command", "listen", "listen_host", "listen_port", "verification_keys", "log_format", "verbose", "opa_wait"}
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
        if args.opa_wait < 0:
            raise UsageError("--opa-wait: give 0 or more seconds")
        _check_readable(("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key))
        serving.check_free(settings.listen_host, settings.listen_port)
        serve(
            settings,
            before_serving=lambda: wait_for_opa(
                settings.opa_host, settings.opa_port, wait_s=args.opa_wait, say=log.warning
            ),
        )
    except ValidationError as exc:
        return fail("edgetrust-admission", f"bad settings: {_validation_text(exc)}", EXIT_USAGE)
    except UsageError as exc:
        return fail("edgetrust-admission", exc, EXIT_USAGE)
    except OpaUnavailableError as exc:
        log.debug("OPA not answering", exc_info=True)
        return fail("edgetrust-admission", exc.diagnostics(), EXIT_UNREACHABLE)
    except AdmissionError as exc:
        log.debug("refused to start", exc_info=True)
        return fail("edgetrust-admission", exc.diagnostics(), EXIT_REFUSED)
    except OSError as exc:  # a file the settings name (certificate, key, policy dir) cannot be read
        log.debug("refused to start", exc_info=True)
        return fail("edgetrust-admission", f"{exc} (check the path and its permissions)", EXIT_USAGE)
    except SystemExit as exc:  # uvicorn's own exit, its reason logged on one line (e.g. the port taken since)
        return exc.code if isinstance(exc.code, int) else EXIT_REFUSED
    return EXIT_OK


def _check_readable(*files: tuple[str, Path]) -> None:
    """The serving certificate and key, said by flag and path before anything starts (the TLS library's own
    error names neither)."""
    for flag, path in files:
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise UsageError(f"{flag} {path}: {exc.strerror or exc} (give the webhook's PEM {flag[6:]})") from exc


def _validation_text(exc: ValidationError) -> str:
    """pydantic's errors as `field: problem` pairs on one line (its own text is a multi-line report)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())


if __name__ == "__main__":
    sys.exit(main())
