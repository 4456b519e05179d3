"""Apply one site class's NetworkPolicies from a bundle: all of them or none, and never anything we don't own.

1. validate every object again (a bundle is checked at build time, but the agent trusts only itself);
2. refuse the whole set if it names an object that exists and is not ours (no managed-by label): a
   hand-made NetworkPolicy of the same name is neither taken over nor, later, pruned; the conflict is
   reported naming it and the last known good set stays enforced;
   then dry-run every apply on the API server (server-side apply; force=false unless the object already
   carries our label, see kube.py): any refusal, a conflict with another field manager included, and nothing
   is written;
3. apply what differs (server-side apply, field manager edgetrust-syncer, our managed-by label);
4. prune: delete only objects carrying our label that left the bundle.
If step 3 or 4 fails part-way, the previous set (last known good) is applied back and the error reported.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgetrust.bundles.errors import BundleError
from edgetrust.bundles.networkpolicy import validate_network_policy
from syncer.kube import MANAGED_BY, KubeConflictError, KubeTarget


class ApplyError(BundleError):
    code = "apply_failed"


@dataclass(slots=True)
class ApplyResult:
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def desired(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects as we apply them: validated and labelled as ours. No per-object revision stamp: a new
    bundle that leaves a policy as it was must cost no write (the applied revision is in the agent's status)."""
    prepared = []
    for obj in objects:
        problem = validate_network_policy(obj)
        if problem:
            raise ApplyError(f"a NetworkPolicy in the bundle is invalid: {problem}")
        item = copy.deepcopy(obj)
        metadata = item["metadata"]
        metadata.setdefault("labels", {})[MANAGED_BY[0]] = MANAGED_BY[1]
        prepared.append(item)
    return prepared


def _key(obj: dict[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _same(live: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """No write when the live object already is what we would apply (its spec and labels)."""
    if live is None:
        return False
    labels = (live.get("metadata") or {}).get("labels") or {}
    wanted_labels = wanted["metadata"]["labels"]
    return live.get("spec") == _normalized_spec(wanted["spec"]) and all(
        labels.get(k) == v for k, v in wanted_labels.items()
    )


def _normalized_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores for a spec: defaulted protocols and policyTypes."""
    spec = copy.deepcopy(spec)
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            for port in rule.get("ports") or []:
                port.setdefault("protocol", "TCP")
    if "policyTypes" not in spec:
        spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    return spec


async def apply_set(kube: KubeTarget, wanted: list[dict[str, Any]]) -> ApplyResult:
    result = ApplyResult()
    live = {_key(o): o for o in await kube.list_managed()}
    changed = [o for o in wanted if not _same(live.get(_key(o)), o)]
    keep = {_key(o) for o in wanted}
    stale = [o for key, o in sorted(live.items()) if key not in keep]
    result.unchanged = [_key(o) for o in wanted if o not in changed]
    if not changed and not stale:
        return result  # a no-change sync makes no API writes, not even dry runs
    foreign = []
    for obj in changed:  # 2. never what is not ours
        found = None if _key(obj) in live else await kube.get(obj["metadata"]["namespace"], obj["metadata"]["name"])
        if found is not None:
            foreign.append(_key(obj))
    if foreign:
        raise KubeConflictError(
            f"NetworkPolicy {', '.join(foreign)} exists and is not managed by edgetrust (no "
            f"{MANAGED_BY[0]}={MANAGED_BY[1]} label): not taken over; rename it in the bundle or remove it"
        )
    for obj in changed:  # all or nothing: every object must be accepted before any is written
        await kube.apply(obj, dry_run=True, force=_key(obj) in live)
    for obj in changed:  # 3.
        await kube.apply(obj, force=_key(obj) in live)
        result.applied.append(_key(obj))
    for obj in stale:  # 4. only ours, only what left the bundle
        await kube.delete(obj["metadata"]["namespace"], obj["metadata"]["name"])
        result.pruned.append(_key(obj))
    return result


async def apply_with_rollback(
    kube: KubeTarget, wanted: list[dict[str, Any]], last_known_good: list[dict[str, Any]] | None
) -> ApplyResult:
    try:
        return await apply_set(kube, wanted)
    except BundleError as exc:
        if last_known_good is not None:
            try:
                await apply_set(kube, last_known_good)
            except BundleError as again:
                raise ApplyError(f"{exc.diagnostics()}; and restoring the last known good set failed: {again}") from exc
            raise ApplyError(f"{exc.diagnostics()} (the last known good set was restored)") from exc
        raise
