"""Gatekeeper's `spec.match` semantics, so a constraint applies to exactly the objects it does under Gatekeeper.

kinds ({apiGroups, kinds}, "*" wildcards), scope (*, Cluster, Namespaced), namespaces and excludedNamespaces
(with a trailing or leading `*`), name, labelSelector and namespaceSelector (matchLabels, matchExpressions).
A Namespace object is matched by its own name and labels. When a namespaceSelector needs a namespace's labels
and the namespace is unknown (not synced), the constraint does not match, as in Gatekeeper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LabelLookup = Callable[[str], Mapping[str, str] | None]


@dataclass(frozen=True, slots=True)
class LabelSelector:
    match_labels: Mapping[str, str]
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, operator, values in self.expressions:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True, slots=True)
class ConstraintMatch:
    kinds: tuple[tuple[frozenset[str], frozenset[str]], ...] = ()  # (apiGroups, kinds)
    scope: str = "*"
    namespaces: tuple[str, ...] = ()
    excluded_namespaces: tuple[str, ...] = ()
    name: str | None = None
    label_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None

    def kind_matches(self, group: str, kind: str) -> bool:
        if not self.kinds:
            return True
        return any(
            ("*" in groups or group in groups) and ("*" in kinds or kind in kinds) for groups, kinds in self.kinds
        )

    def matches(self, review: Mapping[str, Any], namespace_labels: LabelLookup) -> bool:
        kind = review.get("kind") or {}
        group, kind_name = str(kind.get("group", "")), str(kind.get("kind", ""))
        if not self.kind_matches(group, kind_name):
            return False
        obj = review.get("object") or review.get("oldObject") or {}
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        namespace = str(review.get("namespace") or metadata.get("namespace") or "")
        is_namespace = kind_name == "Namespace" and group == ""
        if self.scope == "Cluster" and namespace:
            return False
        if self.scope == "Namespaced" and not namespace:
            return False
        name = str(review.get("name") or metadata.get("name") or "")
        if self.name is not None and not _glob(name, self.name):
            return False
        own = name if is_namespace else namespace
        if own and self.namespaces and not any(_glob(own, p) for p in self.namespaces):
            return False
        if own and any(_glob(own, p) for p in self.excluded_namespaces):
            return False
        if self.label_selector is not None:
            labels = metadata.get("labels") or {}
            if not self.label_selector.matches(labels if isinstance(labels, dict) else {}):
                return False
        if self.namespace_selector is not None:
            if is_namespace:
                labels = metadata.get("labels") or {}
            elif namespace:
                labels = namespace_labels(namespace)
                if labels is None:
                    return False
            else:
                return True  # cluster-scoped objects are not filtered by namespaceSelector
            if not self.namespace_selector.matches(labels if isinstance(labels, dict) else {}):
                return False
        return True


def _glob(value: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def parse_selector(raw: Any) -> LabelSelector | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("a label selector must be a mapping")
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise ValueError("matchLabels must be a mapping")
    expressions = []
    for expression in raw.get("matchExpressions") or []:
        if not isinstance(expression, dict) or expression.get("operator") not in (
            "In",
            "NotIn",
            "Exists",
            "DoesNotExist",
        ):
            raise ValueError(
                f"matchExpressions entry {expression!r} needs key and operator In/NotIn/Exists/DoesNotExist"
            )
        values = expression.get("values") or []
        expressions.append((str(expression.get("key")), str(expression["operator"]), tuple(str(v) for v in values)))
    return LabelSelector({str(k): str(v) for k, v in labels.items()}, tuple(expressions))


def parse_match(raw: Mapping[str, Any]) -> ConstraintMatch:
    kinds = []
    for entry in raw.get("kinds") or []:
        if not isinstance(entry, dict):
            raise ValueError("kinds entries must be mappings of apiGroups and kinds")
        groups = entry.get("apiGroups") or ["*"]
        names = entry.get("kinds") or ["*"]
        kinds.append((frozenset(str(g) for g in groups), frozenset(str(k) for k in names)))
    scope = raw.get("scope", "*")
    if scope not in ("*", "Cluster", "Namespaced"):
        raise ValueError(f"scope {scope!r} is not *, Cluster or Namespaced")
    return ConstraintMatch(
        kinds=tuple(kinds),
        scope=str(scope),
        namespaces=_strings(raw.get("namespaces"), "namespaces"),
        excluded_namespaces=_strings(raw.get("excludedNamespaces"), "excludedNamespaces"),
        name=str(raw["name"]) if raw.get("name") else None,
        label_selector=parse_selector(raw.get("labelSelector")),
        namespace_selector=parse_selector(raw.get("namespaceSelector")),
    )


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(value)


def expand_to_pod(review: Mapping[str, Any], template_spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The Pod a workload would create, as Gatekeeper's expansion builds it, to judge Pod constraints early."""
    if template_spec is None:
        return None
    obj = review.get("object") or {}
    template = _template_of(obj)
    if template is None:
        return None
    raw_metadata = template.get("metadata")
    metadata = dict(raw_metadata) if isinstance(raw_metadata, dict) else {}  # workloads.py refuses other shapes
    namespace = review.get("namespace") or ""
    metadata.setdefault("namespace", namespace)
    metadata.setdefault("name", f"{review.get('name') or 'expanded'}-pod")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template_spec}
    return {
        **review,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": metadata["name"],
        "object": pod,
        "oldObject": None,
    }


def _template_of(obj: Any) -> Mapping[str, Any] | None:
    spec = obj.get("spec") if isinstance(obj, dict) else None
    if not isinstance(spec, dict):
        return None
    if "jobTemplate" in spec:
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    return template if isinstance(template, dict) else None


def constraint_kinds(constraints: Sequence[ConstraintMatch]) -> set[tuple[str, str]]:
    return {(g, k) for c in constraints for groups, kinds in c.kinds for g in groups for k in kinds}
