"""Gatekeeper's ConstraintTemplates and Constraints, read as Gatekeeper reads them, to run on our OPA path.

A template (`templates.gatekeeper.sh/v1`) brings Rego and libs for the target `admission.k8s.gatekeeper.sh`
(legacy `rego`/`libs` fields or the `code` list's `Rego` engine) and an OpenAPI schema for its parameters.
As Gatekeeper does, each template's Rego is moved into its own namespace (`data.templates.<Kind>`) and its
libs under `data.libs.<Kind>.lib...`, so two templates may use the same package or lib names. A constraint
(`constraints.gatekeeper.sh/v1beta1`, kind = the template's CRD kind) is checked against that schema at load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from admission.errors import ConfigError
from admission.modes import Mode
from admission.rego.match import ConstraintMatch, parse_match

TARGET = "admission.k8s.gatekeeper.sh"
ACTIONS = {"deny": Mode.ENFORCE, "warn": Mode.WARN, "dryrun": Mode.DRYRUN}
_KIND_RE = re.compile(r"[A-Z][A-Za-z0-9]{0,62}")
_PACKAGE_RE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)\s*$", re.MULTILINE)
_LIB_REF_RE = re.compile(r"\bdata\.lib\.")
_LIB_PACKAGE_RE = re.compile(r"^(\s*package\s+)lib\.", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class ConstraintTemplate:
    name: str
    kind: str
    modules: Mapping[str, str]  # module id -> rewritten Rego
    schema: Mapping[str, Any] | None
    source: str

    @property
    def package(self) -> str:
        return f"templates.{self.kind}"


@dataclass(frozen=True, slots=True)
class Constraint:
    kind: str
    name: str
    match: ConstraintMatch
    parameters: Mapping[str, Any]
    mode: Mode
    source: str

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class GatekeeperSet:
    templates: Mapping[str, ConstraintTemplate] = field(default_factory=dict)  # by kind
    constraints: tuple[Constraint, ...] = ()


def parse_template(document: Mapping[str, Any], source: str) -> ConstraintTemplate:
    where = f"{source}: ConstraintTemplate"
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} has no metadata.name")
    where = f"{source}: ConstraintTemplate {name}"
    spec = document.get("spec") or {}
    try:
        kind = spec["crd"]["spec"]["names"]["kind"]
    except (KeyError, TypeError):
        raise ConfigError(f"{where}: spec.crd.spec.names.kind is missing") from None
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ConfigError(f"{where}: kind {kind!r} is not a Kubernetes kind name")
    if name != kind.lower():
        raise ConfigError(
            f"{where}: metadata.name must be the lowercase of its kind ({kind.lower()}), as in Gatekeeper"
        )
    schema = None
    validation = (spec.get("crd", {}).get("spec", {}) or {}).get("validation")
    if isinstance(validation, dict) and isinstance(validation.get("openAPIV3Schema"), dict):
        schema = validation["openAPIV3Schema"]
        try:
            jsonschema.Draft7Validator.check_schema(_json_schema(schema))
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"{where}: parameter schema is invalid: {exc.message}") from None
    rego, libs = _rego_of(spec.get("targets"), where)
    modules = {f"gatekeeper/{kind}/template.rego": _rewrite(_into_package(rego, f"templates.{kind}", where), kind)}
    for index, lib in enumerate(libs):
        if not _PACKAGE_RE.search(lib) or not _LIB_PACKAGE_RE.search(lib):
            raise ConfigError(f"{where}: libs[{index}] must declare a package under lib. (Gatekeeper's rule)")
        modules[f"gatekeeper/{kind}/lib{index}.rego"] = _rewrite(lib, kind)
    return ConstraintTemplate(name=name, kind=kind, modules=modules, schema=schema, source=source)


def _rego_of(targets: Any, where: str) -> tuple[str, list[str]]:
    if not isinstance(targets, list) or len(targets) != 1 or not isinstance(targets[0], dict):
        raise ConfigError(f"{where}: spec.targets must hold exactly one target")
    target = targets[0]
    if target.get("target") != TARGET:
        raise ConfigError(f"{where}: target {target.get('target')!r} is not {TARGET}")
    rego, libs = target.get("rego"), target.get("libs") or []
    for code in target.get("code") or []:
        if isinstance(code, dict) and code.get("engine") == "Rego" and isinstance(code.get("source"), dict):
            rego = code["source"].get("rego", rego)
            libs = code["source"].get("libs", libs) or []
    if not isinstance(rego, str) or not rego.strip():
        raise ConfigError(f"{where}: no Rego source (only Rego templates run here; CEL-only templates do not)")
    if not isinstance(libs, list) or not all(isinstance(lib, str) for lib in libs):
        raise ConfigError(f"{where}: libs must be a list of Rego sources")
    return rego, libs


def _into_package(rego: str, package: str, where: str) -> str:
    found = _PACKAGE_RE.search(rego)
    if found is None:
        raise ConfigError(f"{where}: the Rego has no package line")
    return rego[: found.start(1)] + package + rego[found.end(1) :]


def _rewrite(rego: str, kind: str) -> str:
    rego = _LIB_PACKAGE_RE.sub(rf"\1libs.{kind}.lib.", rego)
    return _LIB_REF_RE.sub(f"data.libs.{kind}.lib.", rego)


def _json_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 schema as JSON Schema: drop the Kubernetes extensions jsonschema does not know."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    cleaned: dict[str, Any] = clean(dict(openapi))
    return cleaned


def parse_constraint(
    document: Mapping[str, Any], source: str, templates: Mapping[str, ConstraintTemplate]
) -> Constraint:
    kind = document.get("kind")
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    where = f"{source}: {kind} {name}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: constraint of kind {kind!r} has no metadata.name")
    template = templates.get(str(kind))
    if template is None:
        raise ConfigError(f"{where}: no ConstraintTemplate defines kind {kind!r}")
    spec = document.get("spec") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: spec must be a mapping")
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ConfigError(f"{where}: spec.parameters must be a mapping")
    if template.schema is not None:
        errors = sorted(
            jsonschema.Draft7Validator(_json_schema(template.schema)).iter_errors(parameters), key=lambda e: e.path
        )
        if errors:
            path = ".".join(str(p) for p in errors[0].absolute_path) or "(root)"
            raise ConfigError(f"{where}: spec.parameters.{path}: {errors[0].message}")
    action = spec.get("enforcementAction", "deny")
    if action not in ACTIONS:
        raise ConfigError(f"{where}: enforcementAction {action!r} is not one of {sorted(ACTIONS)}")
    try:
        match = parse_match(spec.get("match") or {})
    except ValueError as exc:
        raise ConfigError(f"{where}: spec.match: {exc}") from None
    return Constraint(
        kind=str(kind), name=name, match=match, parameters=parameters, mode=ACTIONS[action], source=source
    )


def load_documents(paths: Iterable[Path]) -> list[tuple[Mapping[str, Any], str]]:
    documents: list[tuple[Mapping[str, Any], str]] = []
    for path in paths:
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        documents.extend((doc, str(path)) for doc in loaded if isinstance(doc, dict))
    return documents


def build_set(documents: Sequence[tuple[Mapping[str, Any], str]]) -> GatekeeperSet:
    templates: dict[str, ConstraintTemplate] = {}
    for document, source in documents:
        if document.get("kind") == "ConstraintTemplate":
            template = parse_template(document, source)
            if template.kind in templates:
                raise ConfigError(
                    f"{source}: kind {template.kind} is also defined by {templates[template.kind].source}"
                )
            templates[template.kind] = template
    constraints = [
        parse_constraint(document, source, templates)
        for document, source in documents
        if str(document.get("apiVersion", "")).startswith("constraints.gatekeeper.sh/")
    ]
    ids = [c.id for c in constraints]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ConfigError(f"constraints defined twice: {', '.join(twice)}")
    return GatekeeperSet(templates=templates, constraints=tuple(constraints))


def load_directory(directory: Path) -> GatekeeperSet:
    """Every template and constraint in the YAML files under `directory` (suites and samples excluded)."""
    if not directory.is_dir():
        return GatekeeperSet()
    files = [
        p
        for p in sorted(directory.rglob("*.y*ml"))
        if p.suffix in (".yaml", ".yml")
        and p.name not in ("suite.yaml", "kustomization.yaml")
        and "samples" not in p.relative_to(directory).parts  # gatekeeper-library's test objects
    ]
    return build_set(load_documents(files))
