"""Rego decisions from an OPA sidecar through opa-python-client, in Gatekeeper's shape.

Our policies are packages `edgetrust.admission.<name>`; Gatekeeper templates are moved to `templates.<Kind>`
(admission/rego/gatekeeper.py). Both define `violation[{"msg": ...}]` over `input.review` (the AdmissionRequest) and
`input.parameters`. Parameters are loaded once as data (`data.edgetrust.config`); each review then costs one
query, naming the applicable policies and constraints, answered by a small generated module with
{name: [violation, ...]} per kind of policy. A name missing from that answer was not loaded: the caller treats
it as undecided, never as clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from opa_client.errors import (
    ConnectionsError,
    DeleteDataError,
    DeletePolicyError,
    PolicyNotFoundError,
    QueryExecuteError,
    RegoParseError,
)
from opa_client.opa_async import AsyncOpaClient

from admission.errors import ConfigError, OpaUnavailableError, PolicyDecisionError, ReviewError
from admission.policy import RegoLibrary, RegoPolicy
from admission.rego.gatekeeper import Constraint, GatekeeperSet
from admission.rego.namespaces import data_path, namespaced

DECISION_PACKAGE = "edgetrust/decision"
DECISION_MODULE = """package edgetrust.decision

import rego.v1

# Every rule of this package is in each answer: keep it to the two results (no helper documents), and
# only the message travels back: violations may carry large `details` that nobody reads here.
msg(v) := v.msg if is_string(v.msg)

else := sprintf("violation without a msg: %v", [v])

# Our policies. `with` costs OPA a fresh evaluation context per policy (measured: 430 -> 270 us for the
# library's 9 policies), so it is used only for policies that have parameters.
violations[name] := [msg(v) | some v in data.edgetrust.admission[name].violation] if {
	some name in input.policies
	data.edgetrust.config.policies[name] == {}
}

violations[name] := [msg(v) | some v in found] if {
	some name in input.policies
	params := data.edgetrust.config.policies[name]
	params != {}
	found := data.edgetrust.admission[name].violation with input.parameters as params
}

# Gatekeeper constraints, each run by its template with the constraint's parameters.
constraints[id] := [msg(v) | some v in found] if {
	some id in input.constraints
	c := data.edgetrust.config.constraints[id]
	found := data.templates[c.kind].violation with input.parameters as c.parameters
}
"""


#: what /readyz says of an OPA that answers without the webhook's modules (its sidecar restarted, empty)
LOST_POLICIES = "OPA answers but has lost the webhook's policies (restarted?); reloading them"


@dataclass(frozen=True, slots=True)
class OpaSettings:
    host: str = "127.0.0.1"
    port: int = 8181
    timeout_s: float = 2.0  # below the API server's webhook timeout (10 s default) so we answer, not it
    constraints_per_query: int = 8


@dataclass(slots=True)
class Decision:
    policies: dict[str, list[str]] = field(default_factory=dict)
    constraints: dict[str, list[str]] = field(default_factory=dict)
    implied: dict[str, list[str]] = field(default_factory=dict)


class OpaDecider:
    def __init__(self, settings: OpaSettings) -> None:
        self._settings = settings
        # identity: OPA gzips larger answers, and for a sidecar on loopback that costs more than it saves
        # (measured: +2 ms per review with 50 constraints)
        self._client = AsyncOpaClient(
            host=settings.host,
            port=settings.port,
            retries=0,
            timeout=settings.timeout_s,
            headers={"Accept-Encoding": "identity"},
        )
        self._started = False
        # What this decider last put into OPA and OPA accepted: policy id -> source, data path -> value. A load
        # writes only what differs, since every policy write makes OPA recompile all modules while queries wait
        # (the review stalls measured during swaps); an id whose write failed or timed out is forgotten, so it is
        # written again. Cleared when OPA is found to have lost our modules (a restarted sidecar).
        self._held: dict[str, str] = {}
        self._held_data: dict[str, Any] = {}

    async def start(self) -> None:
        if not self._started:
            await self._client.__aenter__()
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self._client.close_connection()
            self._started = False

    async def load(
        self,
        policies: Sequence[RegoPolicy],
        libraries: Sequence[RegoLibrary] = (),
        gatekeeper: GatekeeperSet | None = None,
        *,
        namespace: str = "",
    ) -> None:
        """Push every module, the parameters and the decision module; a module OPA refuses stops the start.

        With `namespace` every package and `data.` reference of ours is moved under `data.<namespace>`
        (admission/rego/namespaces.py), so a second set loads beside the one in force and neither sees the other;
        `decide(..., namespace=)` then asks that set. A set that fails half way is left for `unload`.

        Loading over a namespace that already holds a set (a swap slot reused, admission/swap.py) writes only
        the modules and data that changed, then removes the modules the new set no longer has: no review reads
        that namespace while it is loaded, so its modules may be in any mix until the switch."""
        await self.start()
        gatekeeper = gatekeeper if gatekeeper is not None else GatekeeperSet()
        try:
            modules = [(m, "policy library") for library in libraries for m in library.rego.items()]
            modules += [(m, f"policy {policy.name}") for policy in policies for m in policy.rego.items()]
            for template in gatekeeper.templates.values():
                # libs first: the template's imports must resolve when OPA compiles it
                ordered = sorted(
                    template.modules.items(), key=lambda item: not item[0].split("/")[-1].startswith("lib")
                )
                modules += [(m, f"ConstraintTemplate {template.name}") for m in ordered]
            if any(in_namespace(m, namespace) for m in self._held):
                # what we think the namespace holds is only true if OPA did not restart since: one read, no compile
                try:
                    await self._client.get_policy(decision_id(namespace))
                except PolicyNotFoundError:
                    self._held.clear()
                    self._held_data.clear()
            wanted = {decision_id(namespace)}
            for (module_id, source), owner in modules:
                module = policy_id(module_id, namespace)
                wanted.add(module)
                try:
                    await self._put_policy(module, namespaced(source, namespace))
                except RegoParseError as exc:
                    raise ConfigError(f"{owner}: OPA refused it: {_compile_errors(exc)}") from exc
            config = {
                "policies": {p.name: dict(p.parameters) for p in policies},
                "constraints": {
                    c.id: {"kind": c.kind, "parameters": dict(c.parameters)} for c in gatekeeper.constraints
                },
            }
            path = data_path("edgetrust/config", namespace)
            if self._held_data.get(path) != config:
                self._held_data.pop(path, None)
                await self._client.update_or_create_data(config, path)
                self._held_data[path] = config
            await self._put_policy(decision_id(namespace), namespaced(DECISION_MODULE, namespace))
            # what the namespace held before and this set has not: dependents were loaded after what they use,
            # so they go first
            for module in reversed([m for m in self._held if in_namespace(m, namespace) and m not in wanted]):
                await self._delete_policy(module)
        except RegoParseError as exc:
            raise PolicyDecisionError(f"OPA refused a module: {exc}") from exc
        except (aiohttp.ClientError, ConnectionsError, TimeoutError) as exc:
            raise OpaUnavailableError(f"{opa_hint(self._settings.host, self._settings.port)}: {exc}") from exc

    async def unload(self, module_ids: Sequence[str], namespace: str) -> None:
        """Remove a set (its modules, then its data) once no review uses it: the start-up set (namespace "") or
        a swapped-in one. `data.inventory` is shared and stays. A module already gone is skipped."""
        await self.start()
        ids = [decision_id(namespace), *reversed([policy_id(m, namespace) for m in module_ids])]
        ids += [m for m in reversed(self._held) if in_namespace(m, namespace) and m not in ids]  # a slot's leftovers
        try:
            for module in ids:
                await self._delete_policy(module)
            self._held_data.pop(data_path("edgetrust/config", namespace), None)
            with contextlib.suppress(DeleteDataError):  # a set refused before its data was written
                await self._client.delete_data(namespace or "edgetrust/config")
        except (aiohttp.ClientError, ConnectionsError, TimeoutError) as exc:
            raise OpaUnavailableError(f"{opa_hint(self._settings.host, self._settings.port)}: {exc}") from exc

    async def _put_policy(self, module: str, source: str) -> None:
        """PUT one module unless OPA already holds exactly this source under this id (from us)."""
        if self._held.get(module) == source:
            return
        self._held.pop(module, None)  # unknown until OPA says yes
        await self._client.update_policy_from_string(source, module, rego_compat=False)
        self._held[module] = source

    async def _delete_policy(self, module: str) -> None:
        self._held.pop(module, None)
        with contextlib.suppress(DeletePolicyError):  # not there (a set that failed half way): nothing to remove
            await self._client.delete_policy(module)

    async def problem(self, namespace: str = "") -> str | None:
        """None when OPA answers and holds the decision module; otherwise what is wrong, for /readyz: OPA not
        answering (the command that starts it), or an OPA that lost what was loaded (a restarted sidecar)."""
        try:
            await asyncio.wait_for(self._client.get_policy(decision_id(namespace)), self._settings.timeout_s)
        except PolicyNotFoundError:
            self._held.clear()  # OPA restarted empty: nothing we wrote is there any more
            self._held_data.clear()
            return LOST_POLICIES
        except (aiohttp.ClientError, ConnectionsError, TimeoutError, OSError, ValueError):
            return opa_hint(self._settings.host, self._settings.port)
        return None

    async def set_inventory(self, inventory: Mapping[str, Any]) -> None:
        """Replace `data.inventory` (Gatekeeper's view of other cluster objects)."""
        await self.start()
        try:
            await self._client.update_or_create_data(dict(inventory), "inventory")
        except (aiohttp.ClientError, ConnectionsError, TimeoutError) as exc:
            raise OpaUnavailableError(f"OPA at {self._settings.host}:{self._settings.port}: {exc}") from exc

    async def decide(
        self,
        review: Mapping[str, Any],
        policies: Sequence[RegoPolicy],
        constraints: Sequence[Constraint] = (),
        implied: Sequence[Constraint] = (),
        implied_review: Mapping[str, Any] | None = None,
        *,
        images: Mapping[str, str] | None = None,
        namespace: str = "",
    ) -> Decision:
        """Violation messages per policy and constraint; raises when OPA cannot answer.

        `images` (image as written -> canonical reference) reaches our policies as `input.images`.
        """
        if not policies and not constraints and not implied:
            return Decision()
        await self.start()
        # One query per shard, concurrently: OPA evaluates each on its own core, so a review that many
        # constraints apply to is answered in the time of its largest shard. The implied Pod goes as a review of
        # its own: `with input.review as ...` would make OPA re-evaluate every input-dependent rule (measured:
        # 6.1 vs 2.4 ms for 16 library constraints).
        shards: list[dict[str, Any]] = []
        ids = [c.id for c in constraints]
        first = ids[: self._settings.constraints_per_query]
        names = [p.name for p in policies]
        shards.append({"review": review, "images": dict(images or {}), "policies": names, "constraints": first})
        for chunk in _chunks(ids[len(first) :], self._settings.constraints_per_query):
            shards.append({"review": review, "policies": [], "constraints": chunk})
        implied_ids = [c.id for c in implied] if implied_review is not None else []
        for chunk in _chunks(implied_ids, self._settings.constraints_per_query):
            shards.append({"review": implied_review, "policies": [], "constraints": chunk, "implied": True})
        path = data_path(DECISION_PACKAGE, namespace)
        if len(shards) == 1:  # the common case: no task to schedule
            results = [await self._query(shards[0], path)]
        else:
            results = list(await asyncio.gather(*(self._query(shard, path) for shard in shards)))
        decision = Decision(policies=_messages(results[0].get("violations"), [p.name for p in policies]))
        for shard, result in zip(shards, results, strict=True):
            target = decision.implied if shard.get("implied") else decision.constraints
            target.update(_messages(result.get("constraints"), shard["constraints"]))
        return decision

    async def _query(self, request: Mapping[str, Any], path: str) -> dict[str, Any]:
        try:
            answer = await self._client.query_rule({k: v for k, v in request.items() if k != "implied"}, path)
        except RecursionError as exc:
            # orjson reads reviews nested up to 1024 levels; the JSON encoder towards OPA gives up earlier. That
            # is the review's fault, not OPA's: refused as a bad review, never "undecided" (failure: open admits).
            raise ReviewError("the review is nested too deeply to be judged") from exc
        except TimeoutError as exc:
            raise OpaUnavailableError(f"OPA did not answer within {self._settings.timeout_s}s") from exc
        except aiohttp.ClientResponseError as exc:
            raise PolicyDecisionError(f"OPA answered {exc.status}: {exc.message}") from exc
        except (aiohttp.ClientError, ConnectionsError, QueryExecuteError) as exc:
            raise OpaUnavailableError(f"OPA at {self._settings.host}:{self._settings.port}: {exc}") from exc
        result = answer.get("result") if isinstance(answer, dict) else None
        return result if isinstance(result, dict) else {}


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _messages(found: Any, names: Sequence[str]) -> dict[str, list[str]]:
    found = found if isinstance(found, dict) else {}
    return {name: [_message(v) for v in found[name]] for name in names if isinstance(found.get(name), list)}


def _compile_errors(exc: RegoParseError) -> str:
    """OPA's own words, one per error, with the line in the module: what a policy author needs to fix it."""
    parts = []
    for error in getattr(exc, "errors", None) or []:
        if isinstance(error, dict):
            row = (error.get("location") or {}).get("row")
            where = f" (line {row})" if row else ""
            parts.append(f"{error.get('code', 'error')}{where}: {error.get('message', '')}")
    return "; ".join(parts) or str(getattr(exc, "message", exc))


def policy_id(module_id: str, namespace: str = "") -> str:
    """OPA's id of one of our modules; a namespaced set's ids start with its namespace, so sets never clash."""
    base = "edgetrust-admission-" + module_id.replace("/", "-").removesuffix(".rego")
    return f"{namespace}-{base}" if namespace else base


def in_namespace(module: str, namespace: str) -> bool:
    """Whether OPA policy id `module` is one of the set loaded under `namespace` ("" : the start-up set)."""
    if namespace:
        return module.startswith(f"{namespace}-")
    return module == "edgetrust-decision" or module.startswith("edgetrust-admission-")


def decision_id(namespace: str = "") -> str:
    return f"{namespace}-edgetrust-decision" if namespace else "edgetrust-decision"


def _message(violation: Any) -> str:
    if isinstance(violation, str):
        return violation[:4096]
    return f"violation without a msg: {str(violation)[:200]}"


def opa_hint(host: str, port: int) -> str:
    """What to do when OPA does not answer: the command that starts it as the webhook expects it."""
    return (
        f"OPA is not answering at http://{host}:{port} (start it: opa run --server --addr {host}:{port} "
        f"--v0-compatible; or give --opa-port)"
    )


def wait_for_opa(
    host: str, port: int, *, wait_s: float, say: Callable[[str], None], every_s: float = 5.0, poll_s: float = 0.5
) -> None:
    """Block until OPA answers its /health, at most `wait_s` seconds, saying so every `every_s`.

    In the chart OPA is a sidecar started at the same moment as the webhook: a webhook that died at once would
    crash-loop until OPA happened to be first. A bounded wait with a periodic line says what is awaited; past
    it, OpaUnavailableError with the command that starts OPA (the CLI exits 3: nothing was decided)."""
    url = f"http://{host}:{port}/health"
    started = time.monotonic()
    said = started
    while True:
        try:
            if httpx.get(url, timeout=min(2.0, max(wait_s, 0.1))).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        now = time.monotonic()
        if now - started >= wait_s:
            raise OpaUnavailableError(opa_hint(host, port))
        if now - said >= every_s:
            said = now
            say(f"waiting for OPA at http://{host}:{port} ({now - started:.0f} of {wait_s:.0f} s)")
        time.sleep(poll_s)
