"""One AdmissionRequest in, one answer out: every applicable policy decided concurrently, then combined.

What a violation does depends on the policy's mode (enforce denies, warn warns, audit logs, dryrun records in
the API server's audit log); what an undecidable policy does (OPA or registry unreachable) depends on its
failure mode (closed denies, open admits with a warning). Exempt namespaces are admitted before any of it, so a
broken policy, OPA or registry can never lock kube-system out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from admission.errors import AdmissionError, ImageReferenceError, PolicySwapError, ReviewError, WorkloadShapeError
from admission.imageref import parse_image_reference
from admission.images.verifier import ImageVerifier, VerifiedImage
from admission.metrics import AdmissionMetrics
from admission.policy import FailureMode, ImagePolicy, Mode, PolicySet, RegoPolicy
from admission.rego.gatekeeper import Constraint, GatekeeperSet
from admission.rego.inventory import Inventory, InventorySync
from admission.rego.match import expand_to_pod
from admission.rego.opa import LOST_POLICIES, OpaDecider
from admission.rego.workloads import ContainerImage, container_images, pod_spec
from admission.review import AdmissionRequest, bound_node, build_response
from admission.swap import Enforced, SwapReport

log = logging.getLogger("edgetrust.admission")
#: the two OPA namespaces swapped-in sets take turns in (admission/swap.py)
SLOTS = ("swap1", "swap2")
# A set can only be empty when started with unsafe_allow_empty_policy_set (PolicySet.load refuses otherwise).
EMPTY_POLICY_SET_WARNING = (
    "edgetrust admission runs with NO policies (unsafe_allow_empty_policy_set): this review was admitted unchecked"
)


class BindingGate(Protocol):
    def refusal(self, node: str) -> str | None:
        """Why a pod may not be bound to `node` now (None: it may); admission/nodegate.py."""
        ...


@dataclass(slots=True)
class PolicyOutcome:
    policy: str
    mode: Mode
    failure: FailureMode
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # offline admits and the like, surfaced as warnings


@dataclass(slots=True)
class Verdict:
    allowed: bool
    denials: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    audit_annotations: dict[str, str] = field(default_factory=dict)
    patch: list[dict[str, Any]] = field(default_factory=list)
    revision: str = ""  # of the policy set that decided it
    empty_set: bool = False


class AdmissionController:
    def __init__(
        self,
        policies: PolicySet,
        opa: OpaDecider,
        images: ImageVerifier,
        metrics: AdmissionMetrics,
        *,
        inventory: Inventory | None = None,
        inventory_sync: InventorySync | None = None,
        expand_workloads: bool = True,
        counter: int = -1,
        node_gate: BindingGate | None = None,
    ) -> None:
        self._active = Enforced(policies, counter=counter)  # counter: the start-up bundle's (-1: not a bundle)
        self._swap_lock = asyncio.Lock()
        self._generation = 0
        self._swaps = 0
        self._last_failure = ("", "")  # (revision, why) of the last set refused
        self._opa = opa
        self._images = images
        self._metrics = metrics
        self._inventory = inventory if inventory is not None else Inventory()  # an empty one is falsy
        self._inventory_sync = inventory_sync
        self._expand_workloads = expand_workloads
        #: attestation-aware binding (admission/nodegate.py); None: bindings are not checked
        self.node_gate = node_gate

    @property
    def policies(self) -> PolicySet:
        """The set in force now (a review in flight may still be decided by the one before: see swap.py)."""
        return self._active.policies

    @property
    def status(self) -> SwapReport:
        failed_revision, failure = self._last_failure
        active = self._active
        return SwapReport(active.policies.revision, active.counter, self._swaps, failure, failed_revision)

    async def swap(self, policies: PolicySet, *, counter: int = -1, bundle_revision: str = "") -> None:
        """Put `policies` in force without a restart: load it beside the old set, switch, drain, remove the old.

        `counter` is the bundle's revision counter: a set whose counter is not above the one in force is
        refused (a replayed or older bundle never replaces a newer one). A set OPA refuses leaves the old set
        in force; both refusals raise (PolicySwapError) after being counted and kept for `status`, named by
        `bundle_revision` when the set came from a bundle (the name the hub's rollout knows it by)."""
        name = bundle_revision or policies.revision
        async with self._swap_lock:
            old = self._active
            if counter >= 0 and counter <= old.counter:
                self._refused(name, f"revision counter {counter} is not above {old.counter} in force")
            self._generation += 1
            fresh = Enforced(policies, SLOTS[1] if old.namespace == SLOTS[0] else SLOTS[0], counter)
            try:
                await self._opa.load(policies.rego, policies.libraries, policies.gatekeeper, namespace=fresh.namespace)
            except AdmissionError as exc:
                await self._unload(fresh)
                self._refused(name, exc.diagnostics())
            self._active = fresh  # the switch: every review from here on is decided by the new set
            self._swaps += 1
            self._metrics.swaps.labels("applied").inc()
            log.info("admission policies swapped to %s (was %s)", policies.revision, old.policies.revision)
            await old.drained()
            if not old.namespace:
                await self._unload(old)  # the start-up set: not in a slot
            # a swapped-in set stays in its slot, read by no review: the next swap loads over it, and so writes
            # only what changed (admission/swap.py)

    def record_refusal(self, revision: str, why: str) -> None:
        """A set that will not be put in force (here, or a bundle refused before it became a set): counted and
        kept for /readyz, the set in force staying."""
        self._last_failure = (revision, why)
        self._metrics.swaps.labels("failed").inc()
        log.warning("admission policy set %s refused, the one in force stays: %s", revision, why)

    def _refused(self, revision: str, why: str) -> NoReturn:
        self.record_refusal(revision, why)
        raise PolicySwapError(f"policy set {revision} refused: {why}")

    async def _unload(self, enforced: Enforced) -> None:
        try:
            await self._opa.unload(enforced.module_ids(), enforced.namespace)
        except AdmissionError as exc:  # left behind, unreachable: no decision path names it
            log.warning("could not remove policy set %s from OPA: %s", enforced.policies.revision, exc.diagnostics())

    @property
    def metrics(self) -> AdmissionMetrics:
        return self._metrics

    async def start(self) -> None:
        """Load the Rego policies into OPA; the webhook reports ready only after this."""
        active = self._active
        if active.policies.empty:
            log.warning(EMPTY_POLICY_SET_WARNING)
        await self._load(active)
        if self._inventory_sync is not None:
            await self._inventory_sync.sync_once()  # templates that need the inventory see it from the first review
            self._inventory_sync.start()

    async def opa_problem(self) -> str | None:
        """What keeps the webhook from deciding now (None: nothing). An OPA that restarted empty gets the
        policies again here, so a sidecar restart costs a few seconds of not-ready, not a webhook restart."""
        active = self._active
        problem = await self._opa.problem(active.namespace)
        if problem == LOST_POLICIES:
            log.warning("%s", problem)
            try:
                await self._load(active)
            except AdmissionError as exc:
                return f"{problem}: {exc.diagnostics()}"
            if self._inventory_sync is not None:
                await self._inventory_sync.sync_once()
            return None
        return problem

    async def _load(self, active: Enforced) -> None:
        policies = active.policies
        await self._opa.load(policies.rego, policies.libraries, policies.gatekeeper, namespace=active.namespace)

    async def close(self) -> None:
        if self._inventory_sync is not None:
            await self._inventory_sync.close()
        await self._opa.close()
        await self._images.close()

    async def answer(self, request: AdmissionRequest, *, mutate: bool = False) -> dict[str, Any]:
        verdict = await self.decide(request, mutate=mutate)
        if verdict.allowed and verdict.empty_set:
            verdict.warnings.append(EMPTY_POLICY_SET_WARNING)
        subject = f"{request.kind} {request.namespace + '/' if request.namespace else ''}{request.name}"
        message = ""
        if not verdict.allowed:
            message = f"edgetrust denied {subject}: " + "; ".join(verdict.denials)
        self._metrics.requests.labels("allowed" if verdict.allowed else "denied").inc()
        log.log(
            logging.DEBUG if verdict.allowed and not verdict.warnings else logging.INFO,
            "admission uid=%s %s %s: %s%s",
            request.uid,
            request.operation,
            subject,
            "allowed" if verdict.allowed else "denied",
            f" ({'; '.join(verdict.denials)})" if verdict.denials else "",
        )
        return build_response(
            request.uid,
            allowed=verdict.allowed,
            message=message,
            reason="Forbidden" if not verdict.allowed else "",
            warnings=verdict.warnings,
            audit_annotations=verdict.audit_annotations,
            patch=verdict.patch if verdict.allowed else None,
        )

    async def decide(self, request: AdmissionRequest, *, mutate: bool = False) -> Verdict:
        """The verdict of the set in force when the review came in, whatever is swapped in meanwhile."""
        active = self._active
        with active.enter() as policies:
            verdict = await self._decide(request, policies, active.namespace, mutate=mutate)
        verdict.revision = policies.revision
        verdict.empty_set = policies.empty
        return verdict

    async def _decide(self, request: AdmissionRequest, policies: PolicySet, namespace: str, *, mutate: bool) -> Verdict:
        if request.operation not in ("CREATE", "UPDATE"):
            return Verdict(allowed=True)
        if request.namespace and policies.exempt(request.namespace):
            self._metrics.decisions.labels("exempt-namespace", "allowed").inc()
            return Verdict(allowed=True)
        if self.node_gate is not None and request.operation == "CREATE":
            node = bound_node(request.kind, request.obj, request.raw)
            why = self.node_gate.refusal(node) if node is not None else None
            if why is not None:
                self._metrics.decisions.labels("node-attestation", "denied").inc()
                return Verdict(allowed=False, denials=[why])
        try:
            containers = container_images(request.kind, request.obj)
        except WorkloadShapeError as exc:
            self._metrics.decisions.labels("workload-shape", "denied").inc()
            return Verdict(allowed=False, denials=[str(exc)])
        rego = [p for p in policies.rego if p.match.applies(request.kind, request.namespace)]
        image_policies = [p for p in policies.images if p.match.applies(request.kind, request.namespace)]
        # OPA and the registry are asked at the same time; a warm image check never waits on I/O at all.
        rego_task = (
            asyncio.ensure_future(self._decide_rego(request, rego, containers, policies.gatekeeper, namespace))
            if rego or policies.gatekeeper.constraints
            else None
        )
        image_outcomes, verified = await self._decide_images(containers, image_policies)
        rego_outcomes = await rego_task if rego_task is not None else []
        verdict = self._combine([*rego_outcomes, *image_outcomes])
        if mutate and verdict.allowed:
            verdict.patch = _pin_patch(containers, verified)
        return verdict

    async def _decide_rego(
        self,
        request: AdmissionRequest,
        policies: Sequence[RegoPolicy],
        containers: Sequence[ContainerImage],
        gatekeeper: GatekeeperSet,
        namespace: str,
    ) -> list[PolicyOutcome]:
        labels = self._inventory.namespace_labels
        constraints = [c for c in gatekeeper.constraints if c.match.matches(request.raw, labels)]
        implied: list[Constraint] = []
        implied_review = None
        if self._expand_workloads and request.kind != "Pod" and gatekeeper.constraints:
            found = pod_spec(request.kind, request.obj)
            implied_review = expand_to_pod(request.raw, found[0]) if found else None
            if implied_review is not None:
                implied = [c for c in gatekeeper.constraints if c.match.matches(implied_review, labels)]
        outcomes = {p.name: PolicyOutcome(p.name, p.mode, p.failure) for p in policies}
        for constraint in (*constraints, *implied):
            outcomes.setdefault(constraint.name, PolicyOutcome(constraint.name, constraint.mode, FailureMode.CLOSED))
        if not outcomes:
            return []
        try:
            decided = await self._opa.decide(
                request.raw,
                policies,
                constraints,
                implied,
                implied_review,
                images=canonical_images(containers),
                namespace=namespace,
            )
        except ReviewError:
            raise  # the review itself cannot be judged: refused whole, whatever the policies' failure modes
        except AdmissionError as exc:
            self._metrics.opa_errors.labels(exc.code).inc()
            for outcome in outcomes.values():
                outcome.errors.append(f"OPA could not decide: {exc}")
            return list(outcomes.values())
        for policy in policies:
            _record(outcomes[policy.name], decided.policies.get(policy.name))
        for constraint in constraints:
            _record(outcomes[constraint.name], decided.constraints.get(constraint.id))
        for constraint in implied:
            messages = decided.implied.get(constraint.id)
            prefixed = (
                [f"[Implied by {request.kind} expansion] {m}" for m in messages] if messages is not None else None
            )
            _record(outcomes[constraint.name], prefixed)
        return list(outcomes.values())

    async def _decide_images(
        self, containers: Sequence[ContainerImage], policies: Sequence[ImagePolicy]
    ) -> tuple[list[PolicyOutcome], dict[str, VerifiedImage]]:
        outcomes = {p.name: PolicyOutcome(p.name, p.mode, p.failure) for p in policies}
        checks: list[tuple[ContainerImage, ImagePolicy]] = []
        canonical: dict[str, str] = {}
        for container in containers:
            try:
                reference = parse_image_reference(container.image)
            except ImageReferenceError as exc:
                for policy in policies:
                    outcomes[policy.name].violations.append(f"container {container.container}: {exc}")
                continue
            canonical[container.image] = str(reference)
            checks.extend((container, p) for p in policies if p.covers(reference))
        # Each image once per policy, however many containers name it (in whatever spelling): 256 containers of
        # one image are one registry round trip, not 256 racing for the connection pool.
        unique = list(dict.fromkeys((canonical[c.image], p.name) for c, p in checks))
        by_name = {p.name: p for p in policies}
        found: list[VerifiedImage | BaseException]
        if len(unique) == 1:  # the common case; a task per check costs more than a warm check itself
            try:
                found = [await self._images.verify(unique[0][0], by_name[unique[0][1]])]
            except AdmissionError as exc:
                found = [exc]
        else:
            found = await asyncio.gather(
                *(self._images.verify(image, by_name[name]) for image, name in unique), return_exceptions=True
            )
        answers = dict(zip(unique, found, strict=True))
        results = [answers[(canonical[c.image], p.name)] for c, p in checks]
        verified: dict[str, VerifiedImage] = {}
        for (container, policy), result in zip(checks, results, strict=True):
            outcome = outcomes[policy.name]
            where = f"container {container.container} image {container.image}"
            if canonical[container.image] != container.image:
                where += f" (= {canonical[container.image]})"
            if isinstance(result, VerifiedImage):
                verified[container.pointer] = result
                if result.offline:
                    outcome.notes.append(f"{where} admitted from the verification cache: its registry is unreachable")
            elif isinstance(result, AdmissionError):
                if result.code in ("registry_unreachable",):
                    outcome.errors.append(f"{where}: {result}")
                else:
                    outcome.violations.append(f"{where}: {result}")
            elif isinstance(result, BaseException):
                raise result
        return list(outcomes.values()), verified

    def _combine(self, outcomes: Sequence[PolicyOutcome]) -> Verdict:
        verdict = Verdict(allowed=True)
        for outcome in outcomes:
            problems = list(outcome.violations)
            for error in outcome.errors:
                if outcome.failure is FailureMode.CLOSED:
                    problems.append(f"undecided, failing closed: {error}")
                else:
                    verdict.warnings.append(f"[{outcome.policy}] admitted undecided (failure mode open): {error}")
            verdict.warnings.extend(f"[{outcome.policy}] {note}" for note in outcome.notes)
            result = self._apply_mode(outcome, problems, verdict)
            self._metrics.decisions.labels(outcome.policy, result).inc()
        return verdict

    @staticmethod
    def _apply_mode(outcome: PolicyOutcome, problems: list[str], verdict: Verdict) -> str:
        if not problems:
            return "allowed"
        text = "; ".join(problems)
        if outcome.mode is Mode.ENFORCE:
            verdict.allowed = False
            verdict.denials.append(f"[{outcome.policy}] {text}")
            return "error" if outcome.errors and not outcome.violations else "denied"
        if outcome.mode is Mode.WARN:
            verdict.warnings.append(f"[{outcome.policy}] {text}")
            return "warned"
        if outcome.mode is Mode.DRYRUN:
            verdict.audit_annotations[_dryrun_key(outcome.policy)] = text[:1024]
            return "dryrun"
        log.warning("audit-mode policy %s would deny: %s", outcome.policy, text)
        return "audited"


def _dryrun_key(policy: str) -> str:
    """`edgetrust.io/dryrun-<policy>`; the name part of an annotation key holds 63 characters, so a longer one
    keeps a digest of the whole name rather than being cut (two long names cut alike would overwrite each other)."""
    name = f"dryrun-{policy}"
    if len(name) > 63:
        name = f"dryrun-{policy[:42]}-{hashlib.sha256(policy.encode()).hexdigest()[:12]}"
    return f"edgetrust.io/{name}"


def canonical_images(containers: Sequence[ContainerImage]) -> dict[str, str]:
    """`input.images` for our Rego policies: each image as written -> its canonical reference.

    An image that does not parse is left out; policies that match on images treat a missing entry as a
    violation, so what we cannot read is refused, never matched on its raw spelling. Gatekeeper templates see
    only `input.review`, untouched, as under Gatekeeper.
    """
    images: dict[str, str] = {}
    for container in containers:
        try:
            images[container.image] = str(parse_image_reference(container.image))
        except ImageReferenceError:
            continue
    return images


def _record(outcome: PolicyOutcome, messages: list[str] | None) -> None:
    if messages is None:
        outcome.errors.append("OPA has no decision for this policy (not loaded?)")
    else:
        outcome.violations.extend(messages)


def _pin_patch(containers: Sequence[ContainerImage], verified: dict[str, VerifiedImage]) -> list[dict[str, Any]]:
    """JSON patch pinning every verified image to the digest that was verified (tags can move after us)."""
    patch: list[dict[str, Any]] = []
    for container in containers:
        image = verified.get(container.pointer)
        if image is None:
            continue
        pinned = image.reference.with_digest(image.digest)
        if image.reference.digest != image.digest or image.reference.tag:
            patch.append({"op": "replace", "path": container.pointer, "value": pinned})
    return patch
