"""NetworkPolicy validation before anything is applied: at build time (naming the file), by `trustctl policy
test`, by the hub when a bundle is published, and again by the agent: one rule, here, for all four.

The checks are the API server's own for networking.k8s.io/v1, so that a bundle the agent accepts is one the
API server will accept too: all-or-nothing apply depends on it. On top of them, the lockout rule: no policy in
kube-system or edgetrust-system. A default-deny there cuts off DNS, the API server's path to the webhook, or
the syncer's own path to the hub, and the cluster could no longer take the fix; a signature does not make
that safe, so every stage refuses it rather than only the PR check.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
SPEC_FIELDS = {"podSelector", "policyTypes", "ingress", "egress"}
PROTOCOLS = {"TCP", "UDP", "SCTP"}
#: namespaces no bundle may hold a NetworkPolicy in (any policy selecting pods there restricts them)
PROTECTED_NAMESPACES = ("kube-system", "edgetrust-system")


def validate_network_policy(document: Any, *, protected: Sequence[str] = PROTECTED_NAMESPACES) -> str | None:
    """None when valid, else the first problem with its field path (the lockout rule included)."""
    return _validate(document) or lockout(document, protected=protected)


def lockout(document: dict[str, Any], *, protected: Sequence[str] = PROTECTED_NAMESPACES) -> str | None:
    """The lockout rule alone, for a policy already valid: None, or why it is refused."""
    metadata = document.get("metadata") or {}
    namespace = metadata.get("namespace")
    if namespace not in protected:
        return None
    return (
        f"{namespace}/{metadata.get('name')} would restrict {namespace}, which the cluster needs to stay manageable "
        "(DNS, the API server, the webhook, the syncer); refused"
    )


def validate_site_classes(policies: Any, *, protected: Sequence[str] = PROTECTED_NAMESPACES) -> str | None:
    """A bundle's whole networkpolicies data ({site class: [NetworkPolicy, ...]}): None, or the first problem
    naming the site class and the policy. Names must be unique per site class, as the build makes them."""
    if not isinstance(policies, dict) or not all(isinstance(v, list) for v in policies.values()):
        return "networkpolicies data must map site classes to lists"
    for site_class, documents in sorted(policies.items()):
        seen: set[tuple[str, str]] = set()
        for index, document in enumerate(documents):
            problem = validate_network_policy(document, protected=protected)
            if problem:
                return f"site class {site_class}, NetworkPolicy {index + 1}: {problem}"
            key = (document["metadata"]["namespace"], document["metadata"]["name"])
            if key in seen:
                return f"site class {site_class}: NetworkPolicy {key[0]}/{key[1]} appears twice"
            seen.add(key)
    return None


def _validate(document: Any) -> str | None:
    if not isinstance(document, dict):
        return "not a mapping"
    if document.get("apiVersion") != "networking.k8s.io/v1" or document.get("kind") != "NetworkPolicy":
        got = f"{document.get('apiVersion')} {document.get('kind')}"
        return f"apiVersion/kind: expected networking.k8s.io/v1 NetworkPolicy, got {got}"
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        return "metadata: missing"
    name = metadata.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
        return f"metadata.name: {name!r} is not a DNS-1123 subdomain"
    namespace = metadata.get("namespace")
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS1123_LABEL.fullmatch(namespace):
        return f"metadata.namespace: {namespace!r} is not a DNS-1123 label (a bundle names each policy's namespace)"
    spec = document.get("spec")
    if not isinstance(spec, dict):
        return "spec: missing"
    unknown = set(spec) - SPEC_FIELDS
    if unknown:
        return f"spec: unknown fields {sorted(unknown)}"
    problem = _selector(spec.get("podSelector"), "spec.podSelector", required=True)
    if problem:
        return problem
    types = spec.get("policyTypes", [])
    if not isinstance(types, list) or not set(types) <= {"Ingress", "Egress"}:
        return f"spec.policyTypes: {types!r} must list Ingress and/or Egress"
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        rules = spec.get(direction, [])
        if not isinstance(rules, list):
            return f"spec.{direction}: must be a list"
        for index, rule in enumerate(rules):
            where = f"spec.{direction}[{index}]"
            if not isinstance(rule, dict) or set(rule) - {peers, "ports"}:
                return f"{where}: only {peers} and ports are allowed"
            problem = _ports(rule.get("ports", []), f"{where}.ports") or _peers(rule.get(peers, []), f"{where}.{peers}")
            if problem:
                return problem
    return None


def _selector(value: Any, where: str, *, required: bool = False) -> str | None:
    if value is None:
        return f"{where}: required" if required else None
    if not isinstance(value, dict) or set(value) - {"matchLabels", "matchExpressions"}:
        return f"{where}: must be a label selector (matchLabels, matchExpressions)"
    labels = value.get("matchLabels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return f"{where}.matchLabels: must map strings to strings"
    for index, expression in enumerate(value.get("matchExpressions", []) or []):
        if not isinstance(expression, dict) or expression.get("operator") not in (
            "In",
            "NotIn",
            "Exists",
            "DoesNotExist",
        ):
            return f"{where}.matchExpressions[{index}]: needs key and operator In/NotIn/Exists/DoesNotExist"
    return None


def _ports(ports: Any, where: str) -> str | None:
    if not isinstance(ports, list):
        return f"{where}: must be a list"
    for index, port in enumerate(ports):
        here = f"{where}[{index}]"
        if not isinstance(port, dict):
            return f"{here}: must be a mapping"
        if port.get("protocol", "TCP") not in PROTOCOLS:
            return f"{here}.protocol: {port.get('protocol')!r} is not TCP, UDP or SCTP"
        value = port.get("port")
        if isinstance(value, bool) or not (
            value is None
            or (isinstance(value, int) and 1 <= value <= 65535)
            or (isinstance(value, str) and len(value) <= 15 and _PORT_NAME.fullmatch(value))
        ):
            return f"{here}.port: {value!r} is not a port number (1-65535) or name"
        end = port.get("endPort")
        if end is not None and (not isinstance(value, int) or not isinstance(end, int) or not value <= end <= 65535):
            return f"{here}.endPort: {end!r} must be a number >= port"
    return None


def _peers(peers: Any, where: str) -> str | None:
    if not isinstance(peers, list):
        return f"{where}: must be a list"
    for index, peer in enumerate(peers):
        here = f"{where}[{index}]"
        if not isinstance(peer, dict) or not peer or set(peer) - {"podSelector", "namespaceSelector", "ipBlock"}:
            return f"{here}: must have podSelector, namespaceSelector or ipBlock"
        if "ipBlock" in peer:
            if len(peer) > 1:
                return f"{here}: ipBlock cannot be combined with selectors"
            problem = _ip_block(peer["ipBlock"], f"{here}.ipBlock")
            if problem:
                return problem
        for selector in ("podSelector", "namespaceSelector"):
            problem = _selector(peer.get(selector), f"{here}.{selector}")
            if problem:
                return problem
    return None


def _ip_block(block: Any, where: str) -> str | None:
    if not isinstance(block, dict) or "cidr" not in block:
        return f"{where}: needs cidr"
    try:
        network = ipaddress.ip_network(str(block["cidr"]), strict=False)
    except ValueError:
        return f"{where}.cidr: {block['cidr']!r} is not a CIDR"
    for index, excluded in enumerate(block.get("except", []) or []):
        try:
            inner = ipaddress.ip_network(str(excluded), strict=False)
        except ValueError:
            return f"{where}.except[{index}]: {excluded!r} is not a CIDR"
        if inner.version != network.version or not inner.subnet_of(network):  # type: ignore[arg-type]
            return f"{where}.except[{index}]: {excluded} is not inside {network}"
    return None
