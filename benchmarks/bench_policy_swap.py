"""Policy swaps under load: reviews at a constant rate while the policy set is swapped 20 times.

Processes: OPA (pinned build) on loopback; the webhook's controller in this process (the swap is the
controller's: admission/swap.py), so the figure is about the swap, not HTTPS. Reviews are sent open-loop at
`--rate` per second (each at its time, whether or not the one before was answered), each for generation
g in {k-1, k, k+1} of the set k in force when it is sent; set k admits only generation k
(tests/support/policy_generations.py), so a review decided by a mix of two sets, or by the wrong one, shows.

policy_swap errors: reviews not decided (an exception, or a policy undecided: OPA without its modules).
policy_swap wrong_decisions: verdicts that are not what the set that decided them says, or decided by another
  set than the one in force when the review came in. Target for both: 0 at 500 reviews/s across 20 swaps.
policy_swap p99_ms_during_swaps: the 99th percentile of the reviews whose time in the controller overlapped a
  swap (p99_ms_between_swaps: the others, for comparison).

policy_swap publish_to_enforcing_p50_s (goal <= 5): on the REAL node (localpeers/realcluster.py: one per
  machine; where others share it, run this under `flock /tmp/edgetrust-realcluster.lock`): the hub on the
  node's address, the chart's syncer and 2 webhook replicas installed with no bundle in values; `--publishes`
  bundles published one after the other (a random pause of up to one follow interval between them, so a
  publish does not fall at the same point of the replicas' polling each time); each timed from the POST at the
  hub until every replica's /readyz shows its counter (in force: the counter changes at the switch). Needs
  root, like the cluster.
Usage: bench_policy_swap.py [--rate 500] [--swaps 20] [--seconds 10] [--publishes 10 | --publishes 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admission.controller import AdmissionController, Verdict
from admission.images.verifier import CacheSettings, ImageVerifier
from admission.metrics import AdmissionMetrics
from admission.registry import RegistryClient
from admission.rego.opa import OpaDecider, OpaSettings
from localpeers.opa_server import opa_server
from tests.support.policy_generations import generation_set, pod_review

#: the webhook's follow interval as the chart runs it (admission/settings.py follow_interval_s)
FOLLOW_INTERVAL_S = 5.0


async def run(port: int, root: Path, *, rate: float, swaps: int, seconds: float) -> dict[str, float]:
    sets = [generation_set(root, k) for k in range(swaps + 1)]
    generation_of = {s.revision: k for k, s in enumerate(sets)}
    metrics = AdmissionMetrics()
    controller = AdmissionController(
        sets[0], OpaDecider(OpaSettings(port=port)), ImageVerifier(RegistryClient(), metrics, CacheSettings()), metrics
    )
    await controller.start()
    writes = count_policy_writes()
    rng = random.Random(16)
    counts = {"reviews": 0, "errors": 0, "wrong_decisions": 0}
    latencies: list[tuple[float, float]] = []  # (sent at, seconds to the verdict)

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
        latencies.append((started, time.perf_counter() - started))
        if any("undecided" in d or "OPA" in d for d in verdict.denials):
            counts["errors"] += 1
        elif verdict.revision != in_force or verdict.allowed != (label == generation_of[verdict.revision]):
            counts["wrong_decisions"] += 1

    swap_s: list[float] = []
    windows: list[tuple[float, float]] = []  # each swap's start and end, to split the reviews by

    async def swapper() -> None:
        for k in range(1, swaps + 1):
            await asyncio.sleep(seconds / (swaps + 1))
            started = time.perf_counter()
            await controller.swap(sets[k])  # load beside, switch, drain, remove the old: all of it
            windows.append((started, time.perf_counter()))
            swap_s.append(windows[-1][1] - started)

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
    # a review "during a swap" is one whose time in the controller overlaps a swap's
    during = [s for t, s in latencies if any(t < end and t + s > begin for begin, end in windows)]
    outside = [s for t, s in latencies if not any(t < end and t + s > begin for begin, end in windows)]
    slowest = max(swap_s) * 1000 if swap_s else 0.0
    figures = {**counts, "swaps": float(controller.status.swaps), "p99_ms": quantile_ms([s for _, s in latencies])}
    figures |= {"p99_ms_during_swaps": quantile_ms(during), "p99_ms_between_swaps": quantile_ms(outside)}
    figures |= {"reviews_during_swaps": float(len(during)), "opa_policy_writes_per_swap": writes[0] / max(1, swaps)}
    return {**figures, "slowest_swap_ms": round(slowest, 3), "swap_p50_ms": quantile_ms(swap_s, 0.5)}


def count_policy_writes() -> list[int]:
    """Count every module PUT and DELETE the decider sends OPA from now on (each makes OPA recompile every
    module while queries wait): the figure the swap's design lowers, independent of how busy the machine is."""
    from opa_client.opa_async import AsyncOpaClient

    count = [0]
    for name in ("update_policy_from_string", "delete_policy"):
        original = getattr(AsyncOpaClient, name)

        def counted(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            count[0] += 1
            return _original(self, *args, **kwargs)

        setattr(AsyncOpaClient, name, counted)
    return count


def quantile_ms(values: list[float], q: float = 0.99) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3) if ordered else 0.0


def pickup(publishes: int) -> dict[str, float]:
    """Publish at the hub -> every webhook replica enforces, through the real hub, syncer pod and followers."""
    from localpeers.chartrelease import load_images
    from localpeers.realcluster import running_real_cluster
    from tests.support.follow_site import following_site, generation_bundle, replica_context, wait_replicas

    rng = random.Random(16)
    seconds: list[float] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pickup-")))
        cluster = stack.enter_context(running_real_cluster(work / "cluster"))
        site, _ = stack.enter_context(following_site(cluster, load_images(cluster), work / "site", namespace="bf"))
        context = replica_context(site)
        for k in range(1, publishes + 1):
            blob = generation_bundle(site, k)
            time.sleep(rng.uniform(0, FOLLOW_INTERVAL_S))
            started = time.monotonic()
            answer = site.publish(blob)
            if answer.status_code != 200:
                raise RuntimeError(f"the hub refused revision {k}: {answer.status_code} {answer.text}")
            wait_replicas(site, context, k)
            seconds.append(time.monotonic() - started)
    seconds.sort()
    return {
        "publishes": float(len(seconds)),
        "publish_to_enforcing_p50_s": round(statistics.median(seconds), 2),
        "publish_to_enforcing_max_s": round(seconds[-1], 2),
        "publish_to_enforcing_min_s": round(seconds[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--publishes", type=int, default=10, help="bundles published on the real node (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as work, opa_server(Path(work) / "opa") as opa:
        figures = asyncio.run(run(opa.port, Path(work), rate=args.rate, swaps=args.swaps, seconds=args.seconds))
    if args.publishes:
        figures |= pickup(args.publishes)
    print(f"{'metric':<22} {'value':>9}")
    for metric, value in figures.items():
        print(f"{metric:<22} {value:>9g}")
    print(f"(rate {args.rate:g}/s for {args.seconds:g} s, {args.swaps} swaps)")
    results = [("errors", "count"), ("wrong_decisions", "count"), ("p99_ms_during_swaps", "ms")]
    results.append(("opa_policy_writes_per_swap", "count"))
    if args.publishes:
        results.append(("publish_to_enforcing_p50_s", "s"))
    for metric, unit in results:
        print(
            "RESULT " + json.dumps({"bench": "policy_swap", "metric": metric, "value": figures[metric], "unit": unit})
        )


if __name__ == "__main__":
    main()
