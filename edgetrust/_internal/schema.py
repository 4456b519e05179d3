"""The JSON Schemas of edgetrust/schemas/*.json, checked with `jsonschema`, errors as `field.path[1]: message`.

A file format a user writes (policy.yaml, the fleet file) is published as a JSON Schema in edgetrust/schemas/, so that
editors and CI can check it too, and every reader here validates with that very file: the published schema and
the code cannot disagree. Errors are sorted by field path and name the field the way the user wrote it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"  # package data: the wheel carries them


def _ecma_pattern(
    validator: jsonschema.protocols.Validator, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterable[jsonschema.ValidationError]:
    r"""`pattern` as JSON Schema means it (ECMA-262): `$` is the end of the string. Python's `re.search`, which
    the stock validator uses, lets `$` match before a final newline, so `"require_limits\n"` would pass a name
    pattern; every unescaped `$` is read as `\Z` here, so editors, CI and this code agree on the published file."""
    if isinstance(instance, str) and not re.search(_python_pattern(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _python_pattern(pattern: str) -> str:
    return re.sub(r"(?<!\\)\$", r"\\Z", pattern)


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """The validator of edgetrust/schemas/<name>.schema.json (checked itself against its metaschema once)."""
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema)
    cls: type[jsonschema.protocols.Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        base, {"pattern": _ecma_pattern}
    )
    return cls(schema)


def field_path(parts: Iterable[str | int]) -> str:
    """`groups.stores.waves[1]`: keys joined by dots, list indexes in brackets."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def problems(name: str, instance: Any) -> list[str]:
    """Every way `instance` breaks edgetrust/schemas/<name>.schema.json, as `field: message` lines (empty: valid)."""
    found = []
    for error in sorted(validator(name).iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        found.extend(_describe(error))
    return list(dict.fromkeys(found))


def _describe(error: jsonschema.ValidationError) -> list[str]:
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    where = field_path(error.absolute_path)
    prefix = f"{where}: " if where else ""
    if error.validator in ("oneOf", "anyOf") and error.context:
        # the alternative that went deepest says what is wrong, not "is not valid under any of the given schemas"
        best = max(error.context, key=lambda e: len(e.absolute_path))
        if len(best.absolute_path) == len(error.absolute_path) and schema.get("description"):
            return [f"{prefix}{schema['description']}"]
        return _describe(best)
    if isinstance(schema.get("errorMessage"), str) and error.validator not in ("additionalProperties", "required"):
        return [f"{prefix}{schema['errorMessage']}, not {error.instance!r}"]  # the ajv-errors convention
    if error.validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)  # type: ignore[union-attr]
        return [f"{prefix}{error.instance!r} is not one of {allowed}"]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        hint = f" (known: {', '.join(known)})" if known else ""
        return [f"{prefix}unknown field {key!r}{hint}" for key in unknown]
    if error.validator == "required":
        return [f"{prefix}{error.message}"]
    if error.validator == "pattern":
        return [f"{prefix}{error.instance!r} does not match {error.validator_value}"]
    description = schema.get("description") if error.validator == "not" else None
    return [f"{prefix}{description or error.message}"]
