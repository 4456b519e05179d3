"""The default policy library: policies/admission of this repository, shipped inside the `admission` package.

`edgetrust-admission serve --default-library` enforces it, so that `helm install` with no values gives a webhook
that refuses privileged, host-namespace, hostPath and hostPort pods and unpinned tags (and warns or audits as
each policy.yaml says) without any file of the user's. It is package data (admission/library links to
policies/admission; pyproject.toml ships its policy.yaml and Rego files), so the image's signature covers the
policies the webhook enforces, and no ConfigMap can swap them.

A policy that needs a site's value (allowed_repos: the site's registries, which the library cannot know) has
nothing to enforce until the site gives it: from the default library it is left out, named in a warning at every
start with the parameter that turns it on (`--parameters`, the chart's `webhook.parameters`). Everywhere else
(a policy directory, a bundle, `trustctl policy build`) an unset site parameter still stops the start, since
there the site wrote the policy set and an unset value is a mistake, not a default.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from admission.errors import ConfigError
from edgetrust.bundles import policyfile
from edgetrust.bundles.errors import PolicyFileError

log = logging.getLogger("edgetrust.admission")
_TESTS = shutil.ignore_patterns("*_test.rego")


@dataclass(frozen=True, slots=True)
class DefaultLibrary:
    """The library as the webhook loads it: a folder for PolicySet.load, and what was left out and why."""

    directory: Path
    left_out: tuple[str, ...]  # "policy: why, and how to turn it on"


def packaged_library() -> Path:
    """The library's folder inside the installed package (a wheel unpacks to files, never a zip here)."""
    located = resources.files("admission").joinpath("library")
    if not isinstance(located, Path) or not located.is_dir() or not any(located.glob("*/policy.yaml")):
        raise ConfigError(
            f"the default policy library is not installed at {located} (admission/library: reinstall edgetrust, "
            "or give --policy-dir or --bundle)"
        )
    return located


def default_library(parameters: Path | None, *, work: Path | None = None) -> DefaultLibrary:
    """A copy of the packaged library without the policies whose site parameters `parameters` does not set."""
    source = packaged_library()
    try:
        site = policyfile.load_site(parameters) if parameters is not None else policyfile.SiteParameters()
    except PolicyFileError as exc:
        raise ConfigError(str(exc)) from None
    target = Path(tempfile.mkdtemp(prefix="edgetrust-library-", dir=work)) / "admission"
    left_out: list[str] = []
    for meta_path in sorted(source.glob("*/policy.yaml")):
        try:
            meta = policyfile.read(meta_path)
            name = policyfile.policy_name(meta, meta_path.parent.name, str(meta_path))
        except PolicyFileError as exc:
            raise ConfigError(str(exc)) from None
        if name in site.values:  # the site named it: its values are checked as everywhere (empty is refused)
            shutil.copytree(meta_path.parent, target / meta_path.parent.name, ignore=_TESTS)
            continue
        merged = {**meta, "parameters": dict(meta.get("parameters") or {})}
        try:
            policyfile.check_site_parameters(merged, str(meta_path), name)
        except PolicyFileError:
            unset = [key for key in meta.get("siteParameters") or () if not merged["parameters"].get(key)]
            left_out.append(
                f"{name}: needs the site's {', '.join(unset)} (e.g. --parameters with {name}: "
                f"{{{unset[0]}: [...]}}; chart: webhook.parameters.{name}.{unset[0]})"
            )
            continue
        shutil.copytree(meta_path.parent, target / meta_path.parent.name, ignore=_TESTS)
    for reason in left_out:
        log.warning("default policy library: %s is not enforced: %s", reason.split(":")[0], reason)
    return DefaultLibrary(target, tuple(left_out))
