"""One cluster group's staged rollout: its waves, what each cluster reported, and how replicas merge it.

Several hub replicas take reports for the same rollout (a cluster's syncer reaches one replica, its webhook
replicas others), so no replica may write the rollout state it holds in memory over the stored one: that write
would erase what another replica recorded since. Each replica records what it learnt as operations (`ops`:
"this cluster applied", "this one failed", ...) and a flush replays them onto the stored state inside the
store's transaction (`Store.update_rollout`), then decides on that merged state whether the rollout halts or
its next wave opens. Both decisions only ever move forward (a wave never closes, a halt never lifts), so two
replicas deciding the same from the same reports agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_WAVES = (10, 50, 100)  # percent of the group's non-canary clusters, cumulative

#: one recorded change: (what, cluster, value); replayed in order by `Rollout.replay`
Op = tuple[str, str, str]


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
    #: what this replica learnt since its last flush to the store
    ops: list[Op] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        # Indexes, so that a cluster's poll and report cost O(1) even in a group of 10,000 clusters
        self._wave_of = {cluster: index for index, wave in enumerate(self.waves) for cluster in wave}
        self._pending = [sum(1 for c in wave if c not in self.applied) for wave in self.waves]

    def released(self, cluster: str) -> bool:
        index = self._wave_of.get(cluster)
        return index is not None and index <= self.opened

    # -- changes, each recorded for the flush ----------------------------------------------------------------
    def set_networkpolicies(self, cluster: str, result: str) -> None:
        self._do(("networkpolicies", cluster, result))

    def mark_applied(self, cluster: str, result: str) -> None:
        self._do(("applied", cluster, result))

    def mark_failed(self, cluster: str, error: str) -> None:
        self._do(("failed", cluster, error))

    def clear_failed(self, cluster: str) -> None:
        self._do(("recovered", cluster, ""))

    def decide(self, max_failures: int) -> bool:
        """Halt past `max_failures`, else open the next wave when this one is done; True when either happened."""
        if not self.halted and len(self.failed) > max_failures:
            self._do(("halt", "", ""))
            return True
        if not self.halted and self.wave_done() and self.opened + 1 < len(self.waves):
            self._do(("open", "", str(self.opened + 1)))
            return True
        return False

    def _do(self, op: Op) -> None:
        self._apply(op)
        self.ops.append(op)

    def _apply(self, op: Op) -> None:
        what, cluster, value = op
        if what == "networkpolicies":
            self.networkpolicies[cluster] = value
        elif what == "applied":
            index = self._wave_of.get(cluster)
            if index is not None and cluster not in self.applied:
                self._pending[index] -= 1
            self.applied[cluster] = value
        elif what == "failed":
            self.failed[cluster] = value
        elif what == "recovered":
            self.failed.pop(cluster, None)
        elif what == "halt":
            self.halted = True
        elif what == "open":
            self.opened = max(self.opened, min(int(value), len(self.waves) - 1))

    def replay(self, ops: list[Op], max_failures: int) -> None:
        """`ops` (another copy's) onto this one, then every decision they allow (a wave done opens the next)."""
        for op in ops:
            self._apply(op)
        while self.decide(max_failures):
            pass
        self.ops.clear()

    def wave_done(self) -> bool:
        size = len(self.waves[self.opened])
        needed = 100 if self.canary and self.opened == 0 else self.advance_at
        return (size - self._pending[self.opened]) * 100 >= size * needed

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("_") and k != "ops"}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Rollout:
        return cls(**_init_fields(state))

    def reset(self, state: dict[str, Any]) -> None:
        """Become `state` (a stored copy of the same rollout): its fields, fresh indexes, nothing to write."""
        for name, value in _init_fields(Rollout.from_state(state).state()).items():
            setattr(self, name, value)
        self.__post_init__()
        self.ops.clear()

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


def _init_fields(state: dict[str, Any]) -> dict[str, Any]:
    """What of a stored state the constructor takes (a key it does not know is a later trustd's: ignored)."""
    fields = Rollout.__dataclass_fields__
    return {k: v for k, v in state.items() if k in fields and fields[k].init}


def plan_waves(members: list[str], canary_clusters: tuple[str, ...], percents: tuple[int, ...]) -> list[list[str]]:
    canary = [c for c in canary_clusters if c in members]
    rest = [c for c in members if c not in canary]
    waves: list[list[str]] = [canary] if canary else []
    done = 0
    for percent in percents:
        upto = min(len(rest), math.ceil(len(rest) * percent / 100))
        if upto > done:
            waves.append(rest[done:upto])
            done = upto
    if done < len(rest):
        waves.append(rest[done:])
    return waves or [[]]
