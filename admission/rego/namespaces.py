"""Our Rego moved under `data.<namespace>`, so a new policy set loads into OPA beside the one in force.

OPA has no transaction over several modules: pushing a new set module by module over the old one would let a
review meet half of each (a policy updated, the library it imports not yet; a constraint whose template is
gone). Instead each set the webhook swaps in lives under its own root, `data.<namespace>.edgetrust...`,
`data.<namespace>.templates...`, `data.<namespace>.libs...`; the webhook asks one decision path per review and
switches to the new one in a single assignment once every module of the new set is in (admission/swap.py).

The move is textual, over the roots only we write: package lines and `data.<root>.` references. `data.inventory`
(the cluster view Gatekeeper templates read) is shared and stays. A module that reaches our roots another way
(`data["edgetrust"]`, a walk over `data`) is not moved; it then finds nothing and its policy has no decision,
which the controller treats as undecided (closed policies deny), never as clean.
"""

from __future__ import annotations

import re

from admission.errors import ConfigError

#: the roots of data our modules are loaded under (ours, Gatekeeper templates', their libs)
ROOTS = ("edgetrust", "templates", "libs")
_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PACKAGE_RE = re.compile(r"^(\s*package\s+)(" + "|".join(ROOTS) + r")\b", re.MULTILINE)
_REF_RE = re.compile(r"\bdata\.(" + "|".join(ROOTS) + r")\b")


def check_namespace(namespace: str) -> str:
    """A namespace is one Rego identifier (and one OPA path segment): lower case, digits, underscores."""
    if not _NAMESPACE_RE.match(namespace) or namespace in ROOTS or namespace == "inventory":
        raise ConfigError(f"OPA namespace {namespace!r} is not a lower-case identifier apart from our roots")
    return namespace


def namespaced(source: str, namespace: str) -> str:
    """`source` with its package and references to our roots moved under `data.<namespace>` ("" : unchanged)."""
    if not namespace:
        return source
    check_namespace(namespace)
    source = _PACKAGE_RE.sub(rf"\g<1>{namespace}.\g<2>", source)
    return _REF_RE.sub(rf"data.{namespace}.\g<1>", source)


def data_path(path: str, namespace: str) -> str:
    """An OPA data/query path (`edgetrust/config`) under the namespace."""
    return f"{check_namespace(namespace)}/{path}" if namespace else path
