"""`trustctl policy test`: what a policy-as-code PR must pass before it is merged.

Runs, against a private OPA on loopback: every Gatekeeper suite (`suite.yaml`) under the given paths, with
`gator verify`'s semantics (admission/rego/suites.py), and `opa test` for every folder holding `*_test.rego`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from edgetrust.bundles.errors import BundleError

if TYPE_CHECKING:
    from edgetrust._internal.cli import Parser

if TYPE_CHECKING:
    from admission.rego.suites import CaseResult

PROG = "trustctl policy test"


def add_parser(sub: argparse._SubParsersAction[Parser], help: str) -> None:
    from edgetrust._internal.cli import add_json
    from edgetrust.bundles.review import PROTECTED_NAMESPACES
    from trustd.cli import policy_release as policy_release_cli

    policy = sub.add_parser("policy", help=help)
    commands = policy.add_subparsers(dest="policy_command", required=True)
    test = commands.add_parser("test", help="run Gatekeeper suites (suite.yaml) and Rego unit tests (*_test.rego)")
    test.add_argument("paths", nargs="+", type=Path, help="suite files or folders to search")
    test.add_argument("--opa", help="the opa binary (default: on PATH, or the one hack/install-peers built)")
    add_json(test)
    test.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    test.add_argument("--against", type=Path, help="the published bundle: list the NetworkPolicy changes against it")
    test.add_argument("--markdown", action="store_true", help="a summary fit for a PR comment")
    test.add_argument(
        "--protected-namespace",
        action="append",
        dest="protected",
        help=f"NetworkPolicies may not restrict it either (always protected: {', '.join(PROTECTED_NAMESPACES)})",
    )
    policy_release_cli.add_parsers(commands)


def run(args: argparse.Namespace) -> int:
    from edgetrust._internal.cli import EXIT_USAGE, fail
    from edgetrust.bundles.format import unpack
    from edgetrust.bundles.review import PROTECTED_NAMESPACES, Review, markdown, review_repository
    from trustd.cli import policy_release as policy_release_cli

    if args.policy_command != "test":
        return policy_release_cli.run(args)
    # the policy tooling (OPA's client, the Gatekeeper suites) loads only when policies are tested
    from admission.errors import AdmissionError
    from admission.rego.suites import find_suites, opa_binary

    try:
        binary = args.opa or opa_binary()
        suites = find_suites(args.paths)
        results = _run_suites(binary, suites)
    except AdmissionError as exc:
        return fail(PROG, exc.diagnostics(), EXIT_USAGE)
    rego = [_opa_test(binary, folder) for folder in _rego_test_folders(args.paths)]
    failed = [r for r in results if not r.ok]
    rego_failed = [r for r in rego if not r[1]]
    try:
        published = unpack(args.against.read_bytes()) if args.against else None
    except (OSError, BundleError) as exc:
        return fail(PROG, f"--against {args.against}: {exc}", EXIT_USAGE)
    review = Review(against=published.revision if published else None)
    for path in args.paths:
        if path.is_dir():
            found = review_repository(
                path, published=published, protected=(*PROTECTED_NAMESPACES, *(args.protected or ()))
            )
            review.errors += found.errors
            review.changes.update(found.changes)
    if not results and not rego:
        review.warnings.append(
            "no tests found (no suite.yaml, no *_test.rego): nothing about these policies' behaviour was checked"
        )
    if args.markdown:
        print(
            markdown(
                suites=len(suites),
                cases_passed=len(results) - len(failed),
                cases_failed=[f"{r.name}: {r.detail}" for r in failed],
                rego=rego,
                review=review,
            )
        )
        return 1 if failed or rego_failed or review.errors else 0
    if args.json:
        print(
            json.dumps(
                {
                    "cases": [{"name": r.name, "ok": r.ok, "detail": r.detail} for r in results],
                    "rego_tests": [{"folder": f, "ok": ok, "output": out} for f, ok, out in rego],
                    "passed": len(results) - len(failed),
                    "failed": len(failed) + len(rego_failed),
                    "errors": review.errors,
                    "warnings": review.warnings,
                    "networkpolicy_changes": review.changes,
                }
            )
        )
    else:
        for result in results:
            if not result.ok:
                print(f"FAIL {result.name}: {result.detail}")
            elif args.verbose:
                print(f"ok   {result.name}")
        for folder, ok, output in rego:
            print(f"{'ok  ' if ok else 'FAIL'} opa test {folder}" + ("" if ok else f"\n{output}"))
        for error in review.errors:
            print(f"FAIL {error}")
        for warning in review.warnings:
            print(f"WARNING {warning}")
        print(
            f"{len(suites)} suites, {len(results)} cases: {len(results) - len(failed)} passed, {len(failed)} failed"
            + (f"; Rego unit tests: {len(rego) - len(rego_failed)}/{len(rego)} folders passed" if rego else "")
        )
    return 1 if failed or rego_failed or review.errors else 0


def _run_suites(binary: str, suites: list[Path]) -> list[CaseResult]:
    from admission.rego.opa import OpaDecider
    from admission.rego.suites import local_opa, run_suite

    if not suites:
        return []
    with local_opa(binary, _free_port()) as settings:

        async def all_suites() -> list[CaseResult]:
            opa = OpaDecider(settings)
            try:
                results: list[CaseResult] = []
                for suite in suites:
                    results.extend(await run_suite(suite, opa))
                return results
            finally:
                await opa.close()

        return asyncio.run(all_suites())


def _rego_test_folders(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.is_dir() and any(p.rglob("*_test.rego"))]


def _opa_test(binary: str, folder: Path) -> tuple[str, bool, str]:
    done = subprocess.run(
        # YAML is ours (policy.yaml, NetworkPolicies, suites), not OPA data: loaded, it would clash at merge
        [binary, "test", "--v0-compatible", "--ignore=*.yaml", "--ignore=*.yml", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return str(folder), done.returncode == 0, (done.stdout + done.stderr).strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
