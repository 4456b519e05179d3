"""The hub's side of policy distribution: signed bundles per cluster group, staged rollouts, cluster status.

A published bundle must come from a publisher of that group (the fleet file lists publishers per group),
verify under a publisher key the hub trusts, be signed for that group (its manifest names it), hold no
NetworkPolicy or admission policy file the syncer would refuse, and be newer than the group's last one; the
hub never re-signs (the key that signs policy stays with the policy pipeline). Which revision a cluster
gets follows the group's rollout: canary clusters first, then waves by share of the group; a wave opens when
every canary, or the group's `advanceAt` share of the previous wave, reported the new revision applied;
failures above the threshold halt it.
Clusters long-poll: an unchanged answer is a 304 after up to `wait` seconds, a few hundred bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust._internal.files import write_private
from edgetrust._internal.schema import problems
from edgetrust.bundles.errors import BundleError
from edgetrust.bundles.format import check_bundle, unpack
from edgetrust.bundles.nodestatus import DEFAULT_MAX_AGE_S as DEFAULT_NODE_MAX_AGE_S
from edgetrust.bundles.signing import verify_bundle
from trustd.errors import ConflictError, NotFoundError, TrustdError
from trustd.server.policy.clusterstatus import ClusterStatus, ReplicaReport
from trustd.server.revocations import Revocations

DEFAULT_WAVES = (10, 50, 100)  # percent of the group's non-canary clusters, cumulative


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


@dataclass(slots=True)
class Rollout:
    revision: str
    counter: int
    previous: int | None
    waves: list[list[str]]
    opened: int = 0  # waves[0..opened] receive the new revision
    applied: dict[str, str] = field(default_factory=dict)  # cluster -> result: NetworkPolicies and admission both
    failed: dict[str, str] = field(default_factory=dict)  # cluster -> error
    halted: bool = False
    canary: bool = False  # waves[0] is the canary wave, which must apply everywhere before the rollout goes on
    advance_at: int = 100
    #: cluster -> result of its syncer's report for this revision: the NetworkPolicies applied (the cluster counts
    #: as applied once its admission replicas are too, or at once when its syncer hands no bundle to a webhook)
    networkpolicies: dict[str, str] = field(default_factory=dict)
    _wave_of: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _pending: list[int] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        # Indexes, so that a cluster's poll and report cost O(1) even in a group of 10,000 clusters
        self._wave_of = {cluster: index for index, wave in enumerate(self.waves) for cluster in wave}
        self._pending = [sum(1 for c in wave if c not in self.applied) for wave in self.waves]

    def released(self, cluster: str) -> bool:
        index = self._wave_of.get(cluster)
        return index is not None and index <= self.opened

    def mark_applied(self, cluster: str, result: str) -> None:
        index = self._wave_of.get(cluster)
        if index is not None and cluster not in self.applied:
            self._pending[index] -= 1
        self.applied[cluster] = result

    def wave_done(self) -> bool:
        size = len(self.waves[self.opened])
        needed = 100 if self.canary and self.opened == 0 else self.advance_at
        return (size - self._pending[self.opened]) * 100 >= size * needed

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("_")}

    def view(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "counter": self.counter,
            "halted": self.halted,
            "waves": [
                {
                    "clusters": wave,
                    "open": index <= self.opened,
                    "applied": sorted(c for c in wave if c in self.applied),
                    "failed": {c: self.failed[c] for c in wave if c in self.failed},
                }
                for index, wave in enumerate(self.waves)
            ],
            "complete": all(c in self.applied for wave in self.waves for c in wave),
        }


def plan_waves(members: list[str], group: Group) -> list[list[str]]:
    canary = [c for c in group.canary if c in members]
    rest = [c for c in members if c not in canary]
    waves: list[list[str]] = [canary] if canary else []
    done = 0
    for percent in group.waves:
        upto = min(len(rest), math.ceil(len(rest) * percent / 100))
        if upto > done:
            waves.append(rest[done:upto])
            done = upto
    if done < len(rest):
        waves.append(rest[done:])
    return waves or [[]]


def _with_etag(blob: bytes) -> tuple[bytes, str]:
    return blob, '"' + hashlib.sha256(blob).hexdigest()[:32] + '"'


class PolicyBundles:
    def __init__(
        self,
        directory: Path,
        fleet: Fleet,
        publisher_keys: Mapping[str, ec.EllipticCurvePublicKey],
        revocations: Revocations | None = None,
        clusters: ClusterStatus | None = None,
    ) -> None:
        self._dir = directory
        #: what each cluster's syncer and webhook replicas report (kept in the store when one is given)
        self.clusters = clusters if clusters is not None else ClusterStatus()
        self.revocations = revocations
        if revocations is not None:
            revocations.on_change(self._notify_all)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fleet = fleet
        self._keys = publisher_keys
        self._blobs: dict[tuple[str, int], tuple[bytes, str]] = {}  # (group, counter) -> (blob, ETag)
        self._rollouts: dict[str, Rollout] = {}
        self._changed: dict[str, asyncio.Event] = {}
        #: the loop long polls wait on, known from the first one
        self._loop: asyncio.AbstractEventLoop | None = None
        self.status: dict[str, dict[str, Any]] = {}
        self._saved_at: dict[str, float] = {}
        self._halted_saved: set[str] = set()
        self._load()

    @property
    def publisher_keys(self) -> Mapping[str, ec.EllipticCurvePublicKey]:
        return self._keys

    def _load(self) -> None:
        for state in self._dir.glob("*/rollout.json"):
            group = state.parent.name
            raw = json.loads(state.read_text())
            self._rollouts[group] = Rollout(**raw)
            for path in state.parent.glob("*.tar.gz"):
                self._blobs[(group, int(path.name.split(".")[0]))] = _with_etag(path.read_bytes())

    def _save(self, group: str) -> None:
        write_private(self._dir / group / "rollout.json", json.dumps(self._rollouts[group].state()).encode())

    def _event(self, group: str) -> asyncio.Event:
        return self._changed.setdefault(group, asyncio.Event())

    def _notify(self, group: str) -> None:
        if self._hop_to_loop(self._notify, group):
            return
        event = self._changed.pop(group, None)
        if event is not None:
            event.set()

    def _notify_all(self) -> None:
        if self._hop_to_loop(self._notify_all):
            return
        for group in list(self._changed):
            self._notify(group)

    def _hop_to_loop(self, call: Callable[..., None], *args: Any) -> bool:
        """Schedule `call` on the loop the long polls wait on when called from another thread (a sync route's
        worker, the revocation watcher's store read): asyncio events are not thread-safe, and an event set from
        another thread wakes its waiters late or never."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            if asyncio.get_running_loop() is loop:
                return False
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(call, *args)
        return True

    def publish(self, group_name: str, blob: bytes, *, publisher: str) -> Rollout:
        """`publisher` is the caller's SPIFFE ID; it must be listed for this group in the fleet file."""
        group = self.fleet.groups.get(group_name)
        if group is None:
            raise UnknownGroupError(f"no cluster group {group_name!r}")
        if publisher not in group.publishers:
            raise PublisherNotAuthorizedError(f"{publisher} may not publish to cluster group {group_name!r}")
        try:
            bundle = unpack(blob)
            verify_bundle(bundle, self._keys)
            counter = bundle.counter
            signed_for = bundle.group
            check_bundle(
                bundle
            )  # the syncer's own rules (NetworkPolicies, policy files): refused before any cluster sees it
        except BundleError as exc:
            raise PolicyDistributionError(f"bundle refused: {exc.code}: {exc.diagnostics()}") from exc
        if signed_for != group_name:
            raise PolicyDistributionError(
                f"bundle refused: bundle_wrong_group: it is signed for cluster group {signed_for!r}, not {group_name!r}"
            )
        current = self._rollouts.get(group_name)
        if current is not None and counter <= current.counter:
            raise StaleBundleError(f"bundle counter {counter} is not newer than {current.counter}")
        (self._dir / group_name).mkdir(exist_ok=True, mode=0o700)
        write_private(self._dir / group_name / f"{counter}.tar.gz", blob)
        self._blobs[(group_name, counter)] = _with_etag(blob)
        waves = plan_waves(self.fleet.members(group), group)
        self._rollouts[group_name] = Rollout(
            bundle.revision,
            counter,
            current.counter if current else None,
            waves,
            canary=bool(group.canary),
            advance_at=group.advance_at,
        )
        self._save(group_name)
        self._notify(group_name)
        return self._rollouts[group_name]

    def rollout(self, group: str) -> Rollout | None:
        return self._rollouts.get(group)

    def bundle_for(self, cluster: str) -> tuple[bytes, str] | None:
        group = self.fleet.group_of(cluster)
        rollout = self._rollouts.get(group.name) if group else None
        if group is None or rollout is None:
            return None
        counter = rollout.counter if rollout.released(cluster) and not rollout.halted else rollout.previous
        if counter is None:
            return None
        return self._blobs[(group.name, counter)]

    async def wait_for_change(
        self, cluster: str, etag: str | None, wait_s: float, revocations_etag: str | None = None
    ) -> tuple[bytes, str] | None:
        """The cluster's bundle if it differs from `etag`, waiting up to wait_s for a change; else None.

        Also returns (None) early when the revocation list moved past `revocations_etag`, so the cluster
        learns of a revocation on the connection it already holds, without a second long poll."""
        self._loop = asyncio.get_running_loop()
        group = self.fleet.group_of(cluster)
        deadline = time.monotonic() + wait_s
        while True:
            found = self.bundle_for(cluster)
            if found is not None and found[1] != etag:
                return found
            if (
                revocations_etag is not None
                and self.revocations is not None
                and self.revocations.current().etag != revocations_etag
            ):
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or group is None:
                return None
            try:
                await asyncio.wait_for(self._event(group.name).wait(), timeout=remaining)
            except TimeoutError:
                return None

    def report(self, cluster: str, report: Mapping[str, Any]) -> None:
        """The cluster's syncer's status report (the cluster is the caller's, from its SVID)."""
        self.status[cluster] = {**report, "received": int(time.time())}
        self.clusters.syncer_report(cluster, report)
        group = self.fleet.group_of(cluster)
        rollout = self._rollouts.get(group.name) if group else None
        if group is None or rollout is None or report.get("revision") != rollout.revision:
            return
        if report.get("result") in ("applied", "unchanged"):
            rollout.networkpolicies[cluster] = str(report["result"])
            rollout.failed.pop(cluster, None)
            self._settle(group, rollout, cluster)
        elif report.get("result") in ("failed", "refused"):
            rollout.failed[cluster] = str(report.get("error", ""))[:300]
            if len(rollout.failed) > group.max_failures:
                rollout.halted = True
        self._progress(group, rollout)

    def report_replica(self, cluster: str, replica: ReplicaReport) -> None:
        """One admission webhook replica's report: what it enforces (ReplicaLimitError past MAX_REPLICAS)."""
        self.clusters.replica_report(cluster, replica)
        group = self.fleet.group_of(cluster)
        rollout = self._rollouts.get(group.name) if group else None
        if group is None or rollout is None or cluster not in rollout.networkpolicies:
            return
        self._settle(group, rollout, cluster)
        self._progress(group, rollout)

    def _settle(self, group: Group, rollout: Rollout, cluster: str) -> None:
        """The cluster's NetworkPolicies are applied: it counts as applied when its admission side is too."""
        if cluster in rollout.applied:
            return
        state, reason = self.clusters.admission_state(cluster, rollout.revision, rollout.counter)
        if state == "applied":
            rollout.mark_applied(cluster, rollout.networkpolicies[cluster])
            rollout.failed.pop(cluster, None)
        elif state == "failed":
            rollout.failed[cluster] = reason[:300]
            if len(rollout.failed) > group.max_failures:
                rollout.halted = True

    def _progress(self, group: Group, rollout: Rollout) -> None:
        transition = rollout.halted and group.name not in self._halted_saved
        if not rollout.halted and rollout.wave_done() and rollout.opened + 1 < len(rollout.waves):
            rollout.opened += 1
            transition = True
            self._notify(group.name)
        # Persist transitions at once; per-cluster progress at most once a second: rewriting the whole state
        # for each of 10,000 reports made the hub quadratic (measured: the fleet_sim stalled half way).
        now = time.monotonic()
        if transition or now - self._saved_at.get(group.name, 0.0) >= 1.0:
            self._save(group.name)
            self._saved_at[group.name] = now
            if rollout.halted:
                self._halted_saved.add(group.name)

    def rollout_view(self, group: str) -> dict[str, Any] | None:
        """The rollout's view, with per cluster its NetworkPolicy revision and each live replica's admission one."""
        rollout = self._rollouts.get(group)
        if rollout is None:
            return None
        view = rollout.view()
        view["clusters"] = {
            cluster: self.clusters.view(cluster, rollout.revision, rollout.counter)
            for wave in rollout.waves
            for cluster in wave
        }
        return view
