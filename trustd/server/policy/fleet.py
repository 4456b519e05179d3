"""The fleet file, parsed and checked: cluster groups (who publishes to each, canary, waves), clusters and their
labels, operators; and the errors of policy distribution, which the fleet file's checks raise too.

The fleet file is configuration, identical on every hub replica (docs/architecture.md, *The hub as replicas*):
it is read at start and never written by the hub.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgetrust._internal.schema import problems
from edgetrust.bundles.nodestatus import DEFAULT_MAX_AGE_S as DEFAULT_NODE_MAX_AGE_S
from trustd.errors import ConflictError, NotFoundError, TrustdError
from trustd.server.policy.rollout import DEFAULT_WAVES


class PolicyDistributionError(TrustdError):
    code = "policy_distribution_refused"


class UnknownGroupError(PolicyDistributionError, NotFoundError):
    code = "no_such_group"


class StaleBundleError(PolicyDistributionError, ConflictError):
    """The bundle is not newer than the group's current one: a conflict with stored state, not a refusal."""

    code = "bundle_not_newer"


class PublisherNotAuthorizedError(PolicyDistributionError):
    """The caller is not a publisher of the group it publishes to."""

    code = "not_authorized"


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    match_labels: Mapping[str, str]
    canary: tuple[str, ...] = ()
    waves: tuple[int, ...] = DEFAULT_WAVES
    max_failures: int = 0  # failures tolerated before the rollout halts
    #: share (percent) of a wave that must report the revision applied before the next wave opens; the canary
    #: wave always needs all. Below 100, a site that is offline (there always is one at the edge) does not
    #: hold the whole fleet back; it converges when it comes back.
    advance_at: int = 95
    #: SPIFFE IDs allowed to publish to this group, and to no other
    publishers: frozenset[str] = frozenset()
    #: seconds after a node's last attestation (quote-verified renewal) past which the group's webhooks refuse
    #: to bind pods to it (edgetrust/bundles/nodestatus.py)
    node_attestation_max_age: int = DEFAULT_NODE_MAX_AGE_S


@dataclass(frozen=True, slots=True)
class Fleet:
    """The fleet file (its format: edgetrust/schemas/fleet.schema.json; annotated: examples/fleet.yaml; checked before
    deploying with `trustctl fleet check`):

        groups:
          <group>: {matchLabels: {...}, publishers: [<SPIFFE ID>, ...], canary: [...], waves: [...], ...}
        clusters:
          <cluster>: {labels: {...}}
        operators: [<SPIFFE ID>, ...]

    Publishers are authorized per group. The old top-level `publishers:` list (any publisher for every group)
    is refused with a message saying what to write instead: read as "every group" it would keep the hole
    open, and read as "no group" it would silently stop every publish."""

    groups: Mapping[str, Group]
    clusters: Mapping[str, Mapping[str, str]]  # name -> labels
    operators: frozenset[str] = frozenset()  # SPIFFE IDs allowed to list and revoke (trustctl fleet)

    @property
    def publishers(self) -> frozenset[str]:
        """Everyone who may publish to some group (which group is checked at publish)."""
        return frozenset().union(*(group.publishers for group in self.groups.values()))

    @classmethod
    def load(cls, path: Path) -> Fleet:
        """The fleet file, checked against edgetrust/schemas/fleet.schema.json (errors name the field: waves[1])."""
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise PolicyDistributionError(f"fleet file {path}: cannot read: {exc}") from exc
        raw = {} if raw is None else raw
        if isinstance(raw, dict) and "publishers" in raw:
            raise PolicyDistributionError(
                f"fleet file {path}: a top-level `publishers` list is no longer accepted; publishers are authorized "
                "per group: move each SPIFFE ID under `groups.<group>.publishers` for the groups it may publish to"
            )
        found = problems("fleet", raw)
        if found:
            raise PolicyDistributionError(f"fleet file {path}: {'; '.join(found)}")
        clusters = {
            str(k): {str(a): str(b) for a, b in ((v or {}).get("labels") or {}).items()}
            for k, v in (raw.get("clusters") or {}).items()
        }
        groups = {}
        for name, spec in (raw.get("groups") or {}).items():
            canary = tuple(spec.get("canary") or ())
            for index, cluster in enumerate(canary):
                if cluster not in clusters:  # a misspelt canary would roll out with no canary at all
                    raise PolicyDistributionError(
                        f"fleet file {path}: groups.{name}.canary[{index}]: no cluster {cluster!r} under clusters"
                    )
            groups[name] = Group(
                name=name,
                match_labels={str(k): str(v) for k, v in (spec.get("matchLabels") or {}).items()},
                canary=canary,
                waves=tuple(spec.get("waves") or DEFAULT_WAVES),
                max_failures=spec.get("maxFailures", 0),
                advance_at=spec.get("advanceAt", 95),
                publishers=frozenset(spec.get("publishers") or ()),
                node_attestation_max_age=spec.get("nodeAttestationMaxAge", DEFAULT_NODE_MAX_AGE_S),
            )
        return cls(groups=groups, clusters=clusters, operators=frozenset(raw.get("operators") or ()))

    def group_of(self, cluster: str) -> Group | None:
        labels = self.clusters.get(cluster)
        if labels is None:
            return None
        for group in self.groups.values():
            if all(labels.get(k) == v for k, v in group.match_labels.items()):
                return group
        return None

    def members(self, group: Group) -> list[str]:
        return sorted(c for c in self.clusters if self.group_of(c) == group)
