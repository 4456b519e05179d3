"""Admission policy files checked once, by everyone who handles them: `trustctl policy test` and `build`, the
hub's publish, the syncer and the webhook (admission/policy.py) all run this module, so a policy.yaml the
webhook would refuse never gets past the builder.

- policy.yaml follows edgetrust/schemas/policy.schema.json (the validator *is* that file).
- Site parameters: the shipped library holds no site's values. A policy lists the parameters each site must set
  (`siteParameters: [repos]`); a site sets them in a parameters file, by policy name:

      allowed_repos:
        repos: ["registry.retail.example/"]

  the policy repository's `parameters.yaml` (picked up by `policy test` and `policy build`), or a file given
  with `--parameters` (`trustctl policy test|build`, `edgetrust-admission serve`). A site parameter left empty
  is refused everywhere: an empty allowlist in enforce mode would deny every pod, and skipping it would admit
  every pod; neither is what the site meant. `policy build` writes the merged policy.yaml into the bundle, so the
  webhook and the syncer take a bundle's values as they are.
- Gatekeeper files in a bundle are YAML, ConstraintTemplates or constraints (the webhook parses them further).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgetrust._internal.schema import problems
from edgetrust.bundles.errors import PolicyFileError

SITE_FILE = "parameters.yaml"
HOW_TO_SET = (
    "set it in the policy repository's parameters.yaml or a file given with --parameters "
    "(trustctl policy test|build, edgetrust-admission serve)"
)
_ADMISSION_POLICY = "edgetrust/admission/*/policy.yaml"
_GATEKEEPER = "edgetrust/gatekeeper/*"


@dataclass(frozen=True, slots=True)
class SiteParameters:
    """A site's parameter values by policy name, and the file they came from (for error messages)."""

    values: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = ""


def validate(meta: Any, where: str) -> dict[str, Any]:
    """policy.yaml checked against edgetrust/schemas/policy.schema.json; PolicyFileError names file and field."""
    if not isinstance(meta, dict):
        raise PolicyFileError(f"{where}: must be a mapping (name, type, mode, ...), not {type(meta).__name__}")
    found = problems("policy", meta)
    if found:
        raise PolicyFileError(f"{where}: {'; '.join(found)}")
    return meta


def read(path: Path) -> dict[str, Any]:
    """One policy.yaml, parsed and validated."""
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc}") from exc
    return validate(meta, str(path))


def policy_name(meta: Mapping[str, Any], folder: str, where: str = "") -> str:
    """The policy's name: its `name`, or the folder's (the schema checks an explicit name; this the default)."""
    name = meta.get("name", folder.replace("-", "_"))
    found = problems("policy", {"name": name})
    if found:
        where = where or f"{folder}/policy.yaml"
        raise PolicyFileError(f"{where}: {found[0]} (the folder's name is the default: set name, or rename it)")
    return str(name)


def load_site(path: Path) -> SiteParameters:
    """A site's parameters file: {policy name: {parameter: value}}."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"parameters file {path}: cannot read: {exc}") from exc
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise PolicyFileError(
            f"{path}: must map policy names to their parameters, e.g. allowed_repos: {{repos: [...]}}"
        )
    for name, values in raw.items():
        if not isinstance(values, dict):
            raise PolicyFileError(f"{path}: {name}: must be a mapping of parameter names to values")
    return SiteParameters(raw, str(path))


def repository_site(repository: Path, given: Path | None) -> SiteParameters | None:
    """The file given with --parameters, else the repository's parameters.yaml, else none."""
    if given is not None:
        return load_site(given)
    default = repository / SITE_FILE
    return load_site(default) if default.is_file() else None


def apply_site(
    metas: Mapping[str, tuple[str, dict[str, Any]]], site: SiteParameters | None
) -> dict[str, dict[str, Any]]:
    """Each policy's metadata with the site's values merged in, and every site parameter checked set.

    `metas` maps policy names to (where, validated metadata). A site value for a policy or a parameter the set
    does not have is refused (a typo would otherwise leave the default in force), and so is a value of another
    type than the policy's default (a string where the policy iterates a list)."""
    values = site.values if site is not None else {}
    where_site = site.source if site is not None else ""
    for name, given in values.items():
        if name not in metas:
            raise PolicyFileError(f"{where_site}: {name}: no such policy (policies: {', '.join(sorted(metas))})")
        where, meta = metas[name]
        declared = meta.get("parameters") or {}
        settable = set(declared) | set(meta.get("siteParameters") or ())
        if meta.get("type", "rego") != "rego" or not settable:
            raise PolicyFileError(f"{where_site}: {name}: the policy takes no parameters ({where})")
        for key, value in given.items():
            if key not in settable:
                has = ", ".join(sorted(settable))
                raise PolicyFileError(f"{where_site}: {name}.{key}: the policy has no parameter {key!r} (has: {has})")
            default = declared.get(key)
            if default is not None and value is not None and _kind(default) != _kind(value):
                raise PolicyFileError(
                    f"{where_site}: {name}.{key}: must be a {_kind(default)} like the policy's default, "
                    f"not a {_kind(value)}"
                )
    merged: dict[str, dict[str, Any]] = {}
    for name, (where, meta) in metas.items():
        result = dict(meta)
        if name in values:
            result["parameters"] = {**(meta.get("parameters") or {}), **values[name]}
        check_site_parameters(result, where, name)
        merged[name] = result
    return merged


def check_site_parameters(meta: Mapping[str, Any], where: str, name: str) -> None:
    """Every parameter the policy says is site-specific is set and not empty."""
    parameters = meta.get("parameters") or {}
    for key in meta.get("siteParameters") or ():
        value = parameters.get(key)
        if value is None or value == [] or value == {} or value == "":
            raise PolicyFileError(
                f"{where}: parameters.{key} is site-specific and not set: {HOW_TO_SET}, e.g. {name}: {{{key}: [...]}}"
            )


def check_directory(admission: Path, site: SiteParameters | None) -> dict[Path, dict[str, Any]]:
    """Every <admission>/*/policy.yaml validated, with the site's values merged in; by file."""
    metas: dict[str, tuple[str, dict[str, Any]]] = {}
    paths: dict[str, Path] = {}
    for path in sorted(admission.glob("*/policy.yaml")):
        meta = read(path)
        name = policy_name(meta, path.parent.name, str(path))
        if name in metas:
            raise PolicyFileError(f"{path}: policy name {name!r} is also used by {paths[name]}")
        metas[name], paths[name] = (str(path), meta), path
    merged = apply_site(metas, site)
    return {paths[name]: meta for name, meta in merged.items()}


def check_bundle_files(files: Mapping[str, bytes]) -> None:
    """A bundle's admission policy files and Gatekeeper files, as the webhook will read them: what the hub runs at
    publish and the syncer before it applies or hands anything over (build ran check_directory on the sources)."""
    metas: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in sorted(files):
        if fnmatch.fnmatchcase(name, _ADMISSION_POLICY) and name.count("/") == 3:
            meta = validate(_yaml(files[name], name), name)
            policy = policy_name(meta, name.split("/")[2], name)
            if policy in metas:
                raise PolicyFileError(f"{name}: policy name {policy!r} is also used by {metas[policy][0]}")
            metas[policy] = (name, meta)
        elif fnmatch.fnmatchcase(name, _GATEKEEPER) and name.endswith((".yaml", ".yml")):
            check_gatekeeper(files[name], name)
    for policy, (where, meta) in metas.items():
        check_site_parameters(meta, where, policy)


def check_gatekeeper(content: bytes, where: str) -> None:
    """YAML whose documents are ConstraintTemplates, constraints or gator suites."""
    try:
        documents = [d for d in yaml.safe_load_all(content.decode()) if d is not None]
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"{where}: not YAML: {exc}") from exc
    for index, document in enumerate(documents, start=1):
        at = f"{where} (document {index})"
        if not isinstance(document, dict):
            raise PolicyFileError(f"{at}: must be a Kubernetes object (apiVersion, kind, ...)")
        api, kind = document.get("apiVersion"), document.get("kind")
        if not isinstance(api, str) or not isinstance(kind, str) or not kind:
            raise PolicyFileError(f"{at}: apiVersion and kind must be strings")
        group = api.split("/")[0]
        if group == "templates.gatekeeper.sh" and kind == "ConstraintTemplate":
            continue
        if group in ("constraints.gatekeeper.sh", "test.gatekeeper.sh"):
            continue
        raise PolicyFileError(
            f"{at}: kind {kind} ({api}) is not a ConstraintTemplate (templates.gatekeeper.sh) or a constraint "
            "(constraints.gatekeeper.sh); put other objects in a samples/ folder"
        )


def dump(meta: Mapping[str, Any]) -> bytes:
    """policy.yaml as the bundle carries it (the site's values merged in)."""
    return yaml.safe_dump(dict(meta), sort_keys=False).encode()


#: libyaml's safe loader when PyYAML was built with it (the same safe subset, about ten times faster: the hub and
#: every syncer parse each policy file of each bundle they are handed)
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(content: bytes, where: str) -> Any:
    try:
        return yaml.load(content.decode(), Loader=_LOADER)  # noqa: S506 (a safe loader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"{where}: not YAML: {exc}") from exc


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__
