"""Gatekeeper constraints under load: 50 constraints loaded, 500 AdmissionReviews/s, target p99 <= 15 ms.

The constraints are gatekeeper-library's (`library/general`, every template and every sample constraint,
topped up to 50 with renamed copies) when the library is found (see tests/integration/gatekeeper/
test_library_suites.py for where), else this repository's Gatekeeper-format fixtures replicated to 50; the
table says which. Reviews: Pods, Deployments (judged by expansion too), Services and Ingresses in namespaces
the constraints match. Same processes and client as bench_admission.py (OPA, the webhook, vegeta).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_admission import attack, cpu_seconds, percentile, summarize

from admission.policy import PolicySet
from localpeers.opa_server import opa_server
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, review, webhook_process, workload

RATE = 500
SECONDS = 10
RAMP = (100, 200, 300, 400, RATE)  # the last is the figure; the ramp shows where the machine runs out
TARGET_P99_MS = 15.0
CONSTRAINTS = 50
REPO = Path(__file__).resolve().parent.parent
LIBRARY = (
    Path(os.environ.get("EDGETRUST_GATEKEEPER_LIBRARY", REPO.parent / "shared" / "data" / "gatekeeper-library"))
    / "library"
    / "general"
)
OWN = REPO / "tests" / "data" / "gatekeeper"


def gatekeeper_dir(dest: Path) -> tuple[Path, str]:
    dest.mkdir(parents=True)
    source = LIBRARY if LIBRARY.is_dir() else OWN
    templates = sorted(source.glob("*/template.yaml"))
    constraints = [yaml.safe_load(p.read_text()) for p in sorted(source.glob("*/samples/*/constraint.yaml"))]
    for index, template in enumerate(templates):
        (dest / f"t{index:02d}.yaml").write_text(template.read_text())
    chosen: list[dict[str, Any]] = []
    while len(chosen) < CONSTRAINTS:
        for original in constraints:
            if len(chosen) == CONSTRAINTS:
                break
            copy = json.loads(json.dumps(original))
            copy["metadata"]["name"] = f"{original['metadata']['name']}-{len(chosen)}"
            copy.setdefault("spec", {})["enforcementAction"] = "warn"  # every review is evaluated in full
            chosen.append(copy)
    (dest / "constraints.yaml").write_text(yaml.safe_dump_all(chosen))
    label = "gatekeeper-library library/general" if source == LIBRARY else "tests/data/gatekeeper (library not found)"
    return dest, f"{label}: {len(templates)} templates, {len(chosen)} constraints"


def reviews() -> list[bytes]:
    image = "registry.edge.example/shop/app:1.0"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]},
    }
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web"},
        "spec": {"rules": [{"host": "shop.edge.example"}]},
    }
    bodies = [
        review(pod(image, name="web"), namespace="production"),
        review(workload("Deployment", pod([image, image], name="api")), namespace="production"),
        review(pod(image, name="debug", security={"privileged": True}), namespace="default"),
        review(service, namespace="default"),
        review(ingress, namespace="default"),
    ]
    bodies[3]["request"]["kind"] = {"group": "", "version": "v1", "kind": "Service"}
    bodies[4]["request"]["kind"] = {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"}
    return [json.dumps(b).encode() for b in bodies]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-gatekeeper-"))
    ca = TestCA(work / "ca")
    gk, description = gatekeeper_dir(work / "gatekeeper")
    policies = policy_dir(work / "policies", rego=False)
    loaded = PolicySet.load(policies, gatekeeper_dir=gk)
    with (
        opa_server(work / "opa") as opa,
        webhook_process(work / "webhook", ca, policy_dir=policies, gatekeeper_dir=gk, opa_port=opa.port) as webhook,
    ):
        url, context = webhook.url, webhook.context
        bodies = reviews()
        warned = 0
        for body in bodies:
            answer = httpx.post(f"{url}/validate", content=body, verify=context).json()["response"]
            warned += len(answer.get("warnings", []))
        rows = []
        for rate in RAMP:
            seconds = SECONDS if rate == RATE else 5
            before = cpu_seconds(webhook.pid), cpu_seconds(opa.pid)
            records = attack(
                f"gk{rate}", f"{url}/validate", bodies, work, rate=rate, seconds=seconds, ca_file=ca.ca_file
            )
            hook_cpu = (cpu_seconds(webhook.pid) - before[0]) / seconds * 100
            opa_cpu = (cpu_seconds(opa.pid) - before[1]) / seconds * 100
            rows.append((rate, summarize(records), hook_cpu, opa_cpu))
    print(f"gatekeeper_load: {description}; loaded {len(loaded.gatekeeper.constraints)}")
    print(f"   violations reported across the {len(bodies)} review shapes (as warnings): {warned}")
    print(
        f"{'rate':>5} {'sent':>6} {'errors':>6} {'p50_ms':>8} {'p90_ms':>8} {'p99_ms':>8} "
        f"{'hook_cpu%':>9} {'opa_cpu%':>8}"
    )
    sustained = 0
    for rate, (latencies, errors, _), hook_cpu, opa_cpu in rows:
        p50, p90, p99 = (percentile(latencies, q) for q in (0.5, 0.9, 0.99))
        print(
            f"{rate:>5} {len(latencies):>6} {errors:>6} {p50:>8.2f} {p90:>8.2f} {p99:>8.2f} "
            f"{hook_cpu:>9.0f} {opa_cpu:>8.0f}"
        )
        if p99 <= TARGET_P99_MS and errors == 0:
            sustained = max(sustained, rate)
    latencies, errors, _ = rows[-1][1]
    p99 = percentile(latencies, 0.99)
    print(f"highest rate in the ramp with p99 <= {TARGET_P99_MS} ms: {sustained}/s")
    results = (("p99_ms", p99, "ms"), ("errors", errors, "count"), ("max_rate_p99_15ms", sustained, "1/s"))
    for metric, value, unit in results:
        print(
            "RESULT "
            + json.dumps({"bench": "gatekeeper_load", "metric": metric, "value": round(value, 3), "unit": unit})
        )


if __name__ == "__main__":
    main()
