"""What a policy-repository PR changes, for the reviewer: NetworkPolicies validated, refused when they would cut
off the cluster's own control plane, and compared per site class with the revision already published.

The lockout rule (no NetworkPolicy in kube-system or edgetrust-system) is edgetrust/bundles/networkpolicy.py's, the one
that `policy build`, the hub's publish and the syncer apply too; here it is reported for every offending
policy at once, with any further namespaces the reviewer protects (--protected-namespace).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrust.bundles.errors import BundleError
from edgetrust.bundles.format import Bundle, read_repository
from edgetrust.bundles.networkpolicy import PROTECTED_NAMESPACES, lockout

__all__ = ["PROTECTED_NAMESPACES", "Review", "markdown", "review_repository"]


@dataclass(slots=True)
class Review:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: site class -> (added, removed, changed) NetworkPolicy names as namespace/name
    changes: dict[str, tuple[list[str], list[str], list[str]]] = field(default_factory=dict)
    against: str | None = None
    #: checked and valid: admission policy files (policy.yaml, site parameters merged) and NetworkPolicies
    admission_policies: int = 0
    network_policies: int = 0


def _key(policy: dict[str, Any]) -> str:
    metadata = policy.get("metadata") or {}
    return f"{metadata.get('namespace', '?')}/{metadata.get('name', '?')}"


def review_repository(
    repository: Path,
    *,
    published: Bundle | None,
    protected: Sequence[str] = PROTECTED_NAMESPACES,
    parameters: Path | None = None,
) -> Review:
    review = Review(against=published.revision if published is not None else None)
    if not (repository / "networkpolicies").is_dir() and not (repository / "admission").is_dir():
        return review
    try:
        # validates every NetworkPolicy, naming the file and the field; the lockout rule is checked below, for all
        # and every policy.yaml, with the site's parameters (`parameters`, else the repository's parameters.yaml)
        source = read_repository(repository, protected=(), parameters=parameters)
    except BundleError as exc:
        review.errors.append(exc.diagnostics())
        return review
    review.admission_policies = sum(1 for name in source.admission_files if name.endswith("/policy.yaml"))
    review.network_policies = sum(len(policies) for policies in source.network_policies.values())
    for site_class, policies in sorted(source.network_policies.items()):
        for policy in policies:
            problem = lockout(policy, protected=tuple(protected))
            if problem:
                review.errors.append(f"networkpolicies/{site_class}: {problem}")
    before = published.network_policies if published is not None else {}
    for site_class in sorted(set(source.network_policies) | set(before)):
        new = {_key(p): p for p in source.network_policies.get(site_class, [])}
        old = {_key(p): p for p in before.get(site_class, [])}
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(k for k in set(new) & set(old) if new[k] != old[k])
        if added or removed or changed:
            review.changes[site_class] = (added, removed, changed)
    return review


def markdown(
    *,
    suites: int,
    cases_passed: int,
    cases_failed: list[str],
    rego: list[tuple[str, bool, str]],
    review: Review,
    rego_suites: int = 0,
    rego_tests: int = 0,
    rego_tests_failed: int = 0,
) -> str:
    """A PR comment: the verdict first, then what failed, then what the PR changes in which site class."""
    rego_failed = [folder for folder, ok, _ in rego if not ok]
    ok = not cases_failed and not rego_failed and not review.errors
    lines = [f"### edgetrust policy test: {'✅ passed' if ok else '❌ failed'}", ""]
    lines.append("| check | result |")
    lines.append("|---|---|")
    lines.append(
        f"| Rego unit tests (`opa test`) | {rego_suites} suites, {rego_tests - rego_tests_failed}/{rego_tests} tests "
        f"passed ({len(rego) - len(rego_failed)}/{len(rego)} folders passed) |"
    )
    lines.append(f"| Gatekeeper suites | {suites} suites, {cases_passed} cases passed, {len(cases_failed)} failed |")
    checked = f"{review.admission_policies} admission policies, {review.network_policies} NetworkPolicies"
    verdict = f"{checked} valid" if not review.errors else f"{len(review.errors)} problem(s)"
    lines.append(f"| Policy files (policy.yaml, NetworkPolicies) | {verdict} |")
    for warning in review.warnings:
        lines += ["", f"> ⚠️ {warning}"]
    if review.errors or cases_failed or rego_failed:
        lines += ["", "#### Problems", ""]
        lines += [f"- {error}" for error in review.errors]
        lines += [f"- suite case {case}" for case in cases_failed]
        for folder, passed, output in rego:
            if not passed:
                lines += [f"- `opa test {folder}`:", "", "```", output[-3000:], "```"]
    lines += ["", f"#### NetworkPolicy changes against {review.against or 'nothing published yet'}", ""]
    if not review.changes:
        lines.append("No NetworkPolicy changes.")
    else:
        lines.append("| site class | added | removed | changed |")
        lines.append("|---|---|---|---|")
        for site_class, (added, removed, changed) in review.changes.items():
            cells = [", ".join(f"`{n}`" for n in names) or "-" for names in (added, removed, changed)]
            lines.append(f"| {site_class} | {' | '.join(cells)} |")
    return "\n".join(lines)
