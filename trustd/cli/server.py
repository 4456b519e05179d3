"""`trustd`: run the hub, print what a device needs to trust it, rotate the CA, mint SVIDs for people and pipelines.

Exit codes: 0 ok, 1 refused (the hub would not start as configured), 2 usage (the command line, or settings
that do not validate).
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from attestation.errors import AttestationError
from edgetrust._internal import logs
from edgetrust._internal.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Parser, UsageError, add_json, fail
from trustd.cli import mint
from trustd.cli.serve_flags import TRUST_FLAGS, add_settings_flags, invalid_settings, settings_from
from trustd.errors import TrustdError
from trustd.server.settings import TrustdSettings


def _parser() -> Parser:
    parser = Parser(prog="trustd", description="edgetrust hub: TPM enrollment and SPIFFE CA")
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the hub (HTTPS)",
        description="Run the hub. Every setting is a flag here or a TRUSTD_* environment variable (named in each "
        "flag's help); a flag wins over the variable.",
    )
    logs.add_arguments(serve)
    add_settings_flags(serve)

    bundle = sub.add_parser("bundle", help="print the trust bundle (SPIFFE JWKS, or PEM roots with --pem)")
    add_settings_flags(bundle, TRUST_FLAGS)
    bundle.add_argument("--pem", action="store_true", help="the X.509 roots a device passes to trustctl --ca-bundle")
    add_json(bundle)
    mint.add_parser(sub)
    rotation = sub.add_parser("ca", help="create the trust material once (init); rotate the CA: prepare, activate")
    steps = rotation.add_subparsers(dest="ca_command", required=True)
    for step, text in (
        ("init", "create the root CA, JWT and revocation keys once (a hub never does it by itself)"),
        ("prepare", "make the next CA and publish it in the bundle (it does not sign yet)"),
        ("activate", "sign with the next CA; keep the old one in the bundle until its SVIDs expire"),
        ("status", "the signing CA, the prepared one, the retired ones"),
    ):
        command = steps.add_parser(step, help=text)
        add_settings_flags(command, TRUST_FLAGS)
        add_json(command)
        if step == "init":
            command.add_argument(
                "--if-absent",
                action="store_true",
                help="keep complete trust material already there (a one-shot init job); half of it is still refused",
            )
        if step == "activate":
            command.add_argument("--keep-for", type=float, default=24 * 3600, help="seconds: the longest SVID TTL")
            command.add_argument(
                "--min-published", type=float, default=900, help="seconds the next CA must have been in the bundle"
            )
    return parser


def _rotate(args: argparse.Namespace, settings: TrustdSettings) -> int:
    from datetime import timedelta

    from edgetrust.spiffe.id import TrustDomain
    from trustd.errors import CAConfigError
    from trustd.server.ca import material
    from trustd.server.ca import rotation as ca_rotation

    trust_domain = TrustDomain.parse(settings.trust_domain)

    def say(line: str) -> None:  # with --json, only the JSON document is printed
        if not args.json:
            print(line)

    if args.ca_command == "init":
        say(material.init(settings, if_absent=args.if_absent))
    elif settings.pkcs11_module is not None and args.ca_command in ("prepare", "activate"):
        raise CAConfigError(
            "CA rotation on a PKCS#11 token is not there yet (docs/trust-across-replicas.md, what is left): "
            "nothing was changed"
        )
    elif args.ca_command == "prepare":
        cert = ca_rotation.prepare(settings.ca_dir, trust_domain)
        say(f"prepared the next CA (serial {cert.serial_number:x}); it is in the bundle now and signs after activate")
    elif args.ca_command == "activate":
        ca_rotation.activate(
            settings.ca_dir,
            keep_for=timedelta(seconds=args.keep_for),
            min_published=timedelta(seconds=args.min_published),
        )
        say("the next CA signs from now on; the old one stays in the bundle until its last SVID expires")
    trust = material.load(settings)
    trust.close()  # the certificates are all the status needs
    ca = trust.ca
    if args.json:
        view = {
            "signing": {
                "serial": f"{ca.certificate.serial_number:x}",
                "not_after": ca.certificate.not_valid_after_utc.isoformat(),
            },
            "in_bundle": [f"{authority.serial_number:x}" for authority in ca.x509_authorities()[1:]],
        }
        print(json.dumps(view))
        return EXIT_OK
    print(f"signing CA: serial {ca.certificate.serial_number:x}, valid until {ca.certificate.not_valid_after_utc}")
    for authority in ca.x509_authorities()[1:]:
        print(f"also in the bundle: serial {authority.serial_number:x}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure_from(args)
    try:
        settings = settings_from(args)
        if args.command == "serve":
            from trustd.server.hub import serve

            serve(settings)
            return 0
        if args.command == "ca":
            return _rotate(args, settings)
        if args.command == "svid":
            return mint.run(args, settings)
        from trustd.server.ca import material

        trust = material.load(settings)  # none: refused, as the hub refuses
        trust.close()
        ca = trust.ca
        if args.pem and args.json:
            raise UsageError("give --pem or --json, not both")
        if args.pem:
            sys.stdout.write(ca.x509_authorities_pem().decode())
        else:  # the SPIFFE bundle is JSON already: --json only says so
            print(json.dumps(ca.bundle(), indent=2))
        return EXIT_OK
    except (TrustdError, AttestationError) as exc:
        return fail("trustd", exc.diagnostics(), EXIT_REFUSED)
    except UsageError as exc:
        return fail("trustd", exc, EXIT_USAGE)
    except ValidationError as exc:
        return fail("trustd", invalid_settings(exc), EXIT_USAGE)
    except ValueError as exc:
        return fail("trustd", f"invalid configuration: {exc}", EXIT_USAGE)


if __name__ == "__main__":
    raise SystemExit(main())
