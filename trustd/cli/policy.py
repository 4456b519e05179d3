"""`trustctl policy test`: what a policy-as-code PR must pass before it is merged.

Runs, against a private OPA on loopback: every Gatekeeper suite (`suite.yaml`) under the given paths, with
`gator verify`'s semantics (admission/rego/suites.py), and `opa test` for every folder holding `*_test.rego`;
checks every policy.yaml (edgetrust/schemas/policy.schema.json, with the site's parameters: `--parameters`, else the
repository's parameters.yaml) and every NetworkPolicy (the lockout rule included), as build, the hub and the
syncer will. The text output counts what ran (suites, cases, Rego tests, files) and names each failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetrust.bundles.errors import BundleError

if TYPE_CHECKING:
    from edgetrust._internal.cli import Parser

if TYPE_CHECKING:
    from admission.rego.suites import CaseResult
    from edgetrust.bundles.review import Review

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
        "--parameters",
        type=Path,
        metavar="FILE",
        help="the site's parameters file ({policy: {parameter: value}}; default: <repository>/parameters.yaml)",
    )
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
    if args.parameters is not None and not args.parameters.is_file():
        return fail(PROG, f"--parameters {args.parameters}: no such file", EXIT_USAGE)
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
    rego_failed = [r for r in rego if not r.ok]
    rego_tests = [t for r in rego for t in r.tests]
    rego_tests_failed = [t for t in rego_tests if not t.ok]
    try:
        published = unpack(args.against.read_bytes()) if args.against else None
    except (OSError, BundleError) as exc:
        return fail(PROG, f"--against {args.against}: {exc}", EXIT_USAGE)
    review = Review(against=published.revision if published else None)
    protected = (*PROTECTED_NAMESPACES, *(args.protected or ()))
    for path in args.paths:
        if path.is_dir() and ((path / "admission").is_dir() or (path / "networkpolicies").is_dir()):
            found = review_repository(path, published=published, protected=protected, parameters=args.parameters)
            review.errors += found.errors
            review.changes.update(found.changes)
            review.admission_policies += found.admission_policies
            review.network_policies += found.network_policies
        elif path.is_dir() and any(path.glob("*/policy.yaml")):
            _check_policy_folder(path, args.parameters, review)
        elif path.is_dir() and (path / "policy.yaml").is_file():
            _check_one_policy(path, args.parameters, review)
    if not results and not rego:
        review.warnings.append(
            "no tests found (no suite.yaml, no *_test.rego): nothing about these policies' behaviour was checked"
        )
    code = 1 if failed or rego_failed or review.errors else 0
    if args.markdown:
        print(
            markdown(
                suites=len(suites),
                cases_passed=len(results) - len(failed),
                cases_failed=[f"{r.name}: {r.detail}" for r in failed],
                rego=[(r.folder, r.ok, r.output) for r in rego],
                review=review,
                rego_suites=len({t.package for t in rego_tests}),
                rego_tests=len(rego_tests),
                rego_tests_failed=len(rego_tests_failed),
            )
        )
        return code
    if args.json:
        print(
            json.dumps(
                {
                    "cases": [{"name": r.name, "ok": r.ok, "detail": r.detail} for r in results],
                    "rego_tests": [r.view() for r in rego],
                    "passed": len(results) - len(failed),
                    "failed": len(failed) + len(rego_failed),
                    "errors": review.errors,
                    "warnings": review.warnings,
                    "networkpolicy_changes": review.changes,
                    "counts": {
                        "gatekeeper_suites": len(suites),
                        "gatekeeper_cases": len(results),
                        "gatekeeper_cases_failed": len(failed),
                        "rego_suites": len({t.package for t in rego_tests}),
                        "rego_tests": len(rego_tests),
                        "rego_tests_failed": len(rego_tests_failed),
                        "admission_policies": review.admission_policies,
                        "network_policies": review.network_policies,
                    },
                }
            )
        )
        return code
    for result in results:
        if not result.ok:
            print(f"FAIL Gatekeeper case {result.name}: {result.detail}")
        elif args.verbose:
            print(f"ok   Gatekeeper case {result.name}")
    for run in rego:
        for test in run.tests:
            if not test.ok:
                print(f"FAIL Rego test {test.package}.{test.name} ({test.location}){test.detail}")
            elif args.verbose:
                print(f"ok   Rego test {test.package}.{test.name}")
        if not run.ok and not run.tests:  # it did not even load: OPA's own words
            print(f"FAIL opa test {run.folder}\n{run.output}")
    for error in review.errors:
        print(f"FAIL {error}")
    for warning in review.warnings:
        print(f"WARNING {warning}")
    print(_summary(len(suites), results, failed, rego, rego_tests, rego_tests_failed, review))
    return code


def _summary(
    suites: int,
    results: list[CaseResult],
    failed: list[CaseResult],
    rego: list[RegoRun],
    tests: list[RegoTest],
    tests_failed: list[RegoTest],
    review: Review,
) -> str:
    """`policies: 10 Rego suites (29 tests) passed, 3 Gatekeeper suites (11 cases) passed, ...`, or what failed."""
    parts = []
    if rego:
        packages = len({t.package for t in tests})
        broken = [r.folder for r in rego if not r.ok and not r.tests]
        if tests_failed or broken:
            part = f"{packages} Rego suites: {len(tests) - len(tests_failed)}/{len(tests)} tests passed"
            parts.append(part + (f", {len(broken)} folders did not load" if broken else ""))
        else:
            parts.append(f"{packages} Rego suites ({len(tests)} tests) passed")
    if suites:
        if failed:
            parts.append(f"{suites} Gatekeeper suites: {len(results) - len(failed)}/{len(results)} cases passed")
        else:
            parts.append(f"{suites} Gatekeeper suites ({len(results)} cases) passed")
    if review.errors:
        parts.append(f"{len(review.errors)} policy file problems")
    else:
        parts.append(f"{review.admission_policies} admission policies valid")
        parts.append(f"{review.network_policies} NetworkPolicies valid")
    verdict = "FAILED" if failed or tests_failed or any(not r.ok for r in rego) or review.errors else "passed"
    return f"policies {verdict}: " + ", ".join(parts)


def _check_policy_folder(folder: Path, parameters: Path | None, review: Review) -> None:
    """A folder of policies (policies/admission) named alone: its policy.yaml files, with the site's parameters
    (--parameters, else parameters.yaml in it or beside it)."""
    from edgetrust.bundles import policyfile

    try:
        given = parameters or next(
            (p for p in (folder / policyfile.SITE_FILE, folder.parent / policyfile.SITE_FILE) if p.is_file()), None
        )
        site = policyfile.load_site(given) if given is not None else None
        review.admission_policies += len(policyfile.check_directory(folder, site))
    except BundleError as exc:
        review.errors.append(exc.diagnostics())


def _check_one_policy(folder: Path, parameters: Path | None, review: Review) -> None:
    """One policy's folder named alone (policies/admission/allowed_repos): its policy.yaml, with the site's
    values for it (--parameters, else the repository's parameters.yaml two folders up)."""
    from edgetrust.bundles import policyfile

    path = folder / "policy.yaml"
    try:
        meta = policyfile.read(path)
        name = policyfile.policy_name(meta, folder.name, str(path))
        default = folder.parent.parent / policyfile.SITE_FILE
        given = parameters or (default if default.is_file() else None)
        site = policyfile.load_site(given) if given is not None else None
        mine = (
            policyfile.SiteParameters({name: site.values[name]}, site.source) if site and name in site.values else None
        )
        policyfile.apply_site({name: (str(path), meta)}, mine)
        review.admission_policies += 1
    except BundleError as exc:
        review.errors.append(exc.diagnostics())


@dataclass(frozen=True, slots=True)
class RegoTest:
    package: str
    name: str
    ok: bool
    location: str = ""
    detail: str = ""


@dataclass(slots=True)
class RegoRun:
    """One `opa test` of a folder: each test's result (from OPA's JSON report), or OPA's words if it failed
    before testing (a module that does not parse)."""

    folder: str
    ok: bool
    output: str
    tests: list[RegoTest] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "ok": self.ok,
            "output": self.output,
            "tests": [{"name": f"{t.package}.{t.name}", "ok": t.ok, "location": t.location} for t in self.tests],
        }


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


def _opa_test(binary: str, folder: Path) -> RegoRun:
    """Each test's result from OPA's JSON report; on a failure, OPA's own text too (what `output` always held)."""

    def opa_test(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # YAML is ours (policy.yaml, NetworkPolicies, suites), not OPA data: loaded, it would clash at merge
            [binary, "test", "--v0-compatible", *flags, "--ignore=*.yaml", "--ignore=*.yml", str(folder)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    done = opa_test("--format=json")
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = None
    if not isinstance(report, list):  # not tested at all: a module that does not parse, a missing folder
        return RegoRun(str(folder), False, (done.stdout + done.stderr).strip())
    tests = []
    for entry in report:
        where = entry.get("location") or {}
        error = entry.get("error")
        detail = f": {error.get('message', error)}" if isinstance(error, dict) else (f": {error}" if error else "")
        tests.append(
            RegoTest(
                package=str(entry.get("package", "")).removeprefix("data."),
                name=str(entry.get("name", "")),
                ok=not entry.get("fail") and not error,
                location=f"{where.get('file', '?')}:{where.get('row', '?')}",
                detail=detail,
            )
        )
    ok = done.returncode == 0 and all(t.ok for t in tests)
    if ok:
        return RegoRun(str(folder), True, f"PASS: {len(tests)}/{len(tests)}", tests)
    text = opa_test()
    return RegoRun(str(folder), False, (text.stdout + text.stderr).strip(), tests)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
