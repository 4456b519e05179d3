"""Which policy set is in force, and the swap to a new one without a restart or a review decided by neither.

A review takes the set in force once, at its start (`Enforced.enter`), and is decided by that set to the end:
its policies, its Gatekeeper constraints and its OPA decision path. A swap loads the new set into OPA under a
namespace of its own (admission/rego/namespaces.py), then replaces the one reference the controller reads, then
waits until the old set's reviews have finished and removes its modules from OPA. The event loop is one thread
and nothing awaits between reading the reference and counting the review in, so no review can start on a set
whose modules are being removed.

Two namespaces (slots) take turns: a swap loads into the one not in force, over the set that was in force
before the last swap (drained by then, read by no review), writing only the modules and data that changed
(OpaDecider.load). Every policy write makes OPA recompile all its modules while queries wait, so a swap that
wrote each module and removed each old one (about 8 writes for a small set) stalled reviews; a new revision of a
bundle usually changes a few modules. The set before stays in OPA until the next swap replaces it: never
reachable, since no review is decided through its namespace. The start-up set (namespace "") is removed after
the first swap.

A set OPA refuses never becomes the one in force: the old set stays, the refusal is counted
(edgetrust_admission_policy_swaps{result="failed"}) and kept as `last_failure` for the status endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from admission.policy import PolicySet


@dataclass(eq=False, slots=True)
class Enforced:
    """One loaded policy set and the OPA namespace its modules live under ("" for the start-up set)."""

    policies: PolicySet
    namespace: str = ""
    counter: int = -1  # the bundle's revision counter; -1: not from a bundle (a folder, the default library)
    _in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @contextmanager
    def enter(self) -> Iterator[PolicySet]:
        """Count a review in for as long as it is decided (synchronous on purpose: see the module doc)."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield self.policies
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def drained(self) -> None:
        """Return once no review is decided by this set any more (each is bounded by the OPA and registry
        timeouts, so this is too)."""
        await self._idle.wait()

    def module_ids(self) -> list[str]:
        """Every module id this set loaded into OPA, in the order loaded (removed in reverse: what imports a
        library's functions before the library, or OPA refuses the removal)."""
        policies = self.policies
        ids = [m for library in policies.libraries for m in library.rego]
        ids += [m for policy in policies.rego for m in policy.rego]
        for template in policies.gatekeeper.templates.values():  # libs first, as OpaDecider.load puts them
            ids += sorted(template.modules, key=lambda m: not m.split("/")[-1].startswith("lib"))
        return ids


@dataclass(frozen=True, slots=True)
class SwapReport:
    """What the status endpoint says of the swaps: the revision in force and the last one refused."""

    revision: str
    counter: int
    swaps: int
    last_failure: str = ""
    last_failed_revision: str = ""
