"""Policy swaps under load: reviews at a constant rate while the policy set is swapped 20 times.

Processes: OPA (pinned build) on loopback; the webhook's controller in this process (the swap is the
controller's: admission/swap.py), so the figure is about the swap, not HTTPS. Reviews are sent open-loop at
`--rate` per second (each at its time, whether or not the one before was answered), each for generation
g in {k-1, k, k+1} of the set k in force when it is sent; set k admits only generation k
(tests/support/policy_generations.py), so a review decided by a mix of two sets, or by the wrong one, shows.

policy_swap errors: reviews not decided (an exception, or a policy undecided: OPA without its modules).
policy_swap wrong_decisions: verdicts that are not what the set that decided them says, or decided by another
  set than the one in force when the review came in. Target for both: 0 at 500 reviews/s across 20 swaps.
Usage: bench_policy_swap.py [--rate 500] [--swaps 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admission.controller import AdmissionController, Verdict
from admission.images.verifier import CacheSettings, ImageVerifier
from admission.metrics import AdmissionMetrics
from admission.registry import RegistryClient
from admission.rego.opa import OpaDecider, OpaSettings
from localpeers.opa_server import opa_server
from tests.support.policy_generations import generation_set, pod_review


async def run(port: int, root: Path, *, rate: float, swaps: int, seconds: float) -> dict[str, float]:
    sets = [generation_set(root, k) for k in range(swaps + 1)]
    generation_of = {s.revision: k for k, s in enumerate(sets)}
    metrics = AdmissionMetrics()
    controller = AdmissionController(
        sets[0], OpaDecider(OpaSettings(port=port)), ImageVerifier(RegistryClient(), metrics, CacheSettings()), metrics
    )
    await controller.start()
    rng = random.Random(16)
    counts = {"reviews": 0, "errors": 0, "wrong_decisions": 0}
    latencies: list[float] = []

    async def one(n: int) -> None:
        in_force = controller.policies.revision
        k = generation_of[in_force]
        label = rng.choice([k - 1, k, k + 1])
        started = time.perf_counter()
        try:
            verdict: Verdict = await controller.decide(pod_review(str(n), label))
        except Exception:  # noqa: BLE001  (the bench counts any review that raises as an error, whatever it is)
            counts["errors"] += 1
            return
        latencies.append(time.perf_counter() - started)
        if any("undecided" in d or "OPA" in d for d in verdict.denials):
            counts["errors"] += 1
        elif verdict.revision != in_force or verdict.allowed != (label == generation_of[verdict.revision]):
            counts["wrong_decisions"] += 1

    swap_s: list[float] = []

    async def swapper() -> None:
        for k in range(1, swaps + 1):
            await asyncio.sleep(seconds / (swaps + 1))
            started = time.perf_counter()
            await controller.swap(sets[k])  # load beside, switch, drain, remove the old: all of it
            swap_s.append(time.perf_counter() - started)

    async def load() -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        total = int(rate * seconds)
        for n in range(total):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            counts["reviews"] += 1
        await asyncio.gather(*tasks)

    try:
        await asyncio.gather(swapper(), load())
    finally:
        await controller.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000 if latencies else 0.0
    slowest = max(swap_s) * 1000 if swap_s else 0.0
    figures = {**counts, "swaps": float(controller.status.swaps), "p99_ms": round(p99, 3)}
    return {**figures, "slowest_swap_ms": round(slowest, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as work, opa_server(Path(work) / "opa") as opa:
        figures = asyncio.run(run(opa.port, Path(work), rate=args.rate, swaps=args.swaps, seconds=args.seconds))
    print(f"{'metric':<18} {'value':>9}")
    for metric, value in figures.items():
        print(f"{metric:<18} {value:>9g}")
    print(f"(rate {args.rate:g}/s for {args.seconds:g} s, {args.swaps} swaps)")
    for metric, unit in (("errors", "count"), ("wrong_decisions", "count")):
        print(
            "RESULT " + json.dumps({"bench": "policy_swap", "metric": metric, "value": figures[metric], "unit": unit})
        )


if __name__ == "__main__":
    main()
