"""The webhook under load, and its overhead over the bare OPA decision, measured side by side in one run.

Processes: OPA (pinned build), a TLS registry with cosign-signed images, and `edgetrust-admission serve` (one
uvicorn worker), each its own process on loopback. The client is vegeta (pinned Go peer): constant rate, cheap
per request, so it does not compete with the webhook and OPA for the two cores; keep-alive connections, as the
API server keeps them to its webhooks.

admission_load: 500 AdmissionReviews/s for 10 s, 10 policies (9 Rego + 1 image signature), warm cache, a mix of
  Pods and workloads, one in five denied. Targets: p99 <= 10 ms, p50 <= 3 ms, no errors.
admission_overhead: the same reviews through the webhook (HTTPS) and as the bare OPA query the webhook makes for
  them (HTTP, OPA's REST API), alternating 3 x 3 s each; ratio of medians at admission_load's 500/s (the RESULT,
  target <= 2) and, shown beside it, at a light 100/s, where each hop's wake-up from idle dominates.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admission.policy import PolicySet
from localpeers.opa_server import opa_server
from localpeers.peers import peer
from localpeers.registry import running_registry
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, review, webhook_process, workload

RATE = 500
SECONDS = 10
CONNECTIONS = 16
SIDE_RATES = (RATE, 100)  # at the load of admission_load (the figure), and lightly loaded (shown)
SIDE_ROUNDS = 3


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def reviews(host: str) -> list[bytes]:
    signed = f"{host}/bench/app:v1"
    bodies = [
        review(pod(signed, name="web")),
        review(workload("Deployment", pod([signed, signed], name="api"))),
        review(workload("StatefulSet", pod(signed, name="db"))),
        review(pod(signed, name="worker", labels={"app.kubernetes.io/name": "worker", "tier": "batch"})),
        review(pod(signed, name="root", security={"privileged": True})),  # denied by no_privileged
    ]
    return [json.dumps(b).encode() for b in bodies]


def opa_input(body: bytes, policies: PolicySet) -> bytes:
    """The query the webhook sends OPA for this review (admission/rego/opa.py's decision contract)."""
    request = json.loads(body)["request"]
    names = [p.name for p in policies.rego]
    return json.dumps({"input": {"review": request, "policies": names, "constraints": []}}).encode()


def attack(
    name: str, url: str, bodies: list[bytes], work: Path, *, rate: int, seconds: int, ca_file: Path | None = None
) -> list[dict[str, Any]]:
    """vegeta at a constant rate; one record per request (latency in ns, status code, body)."""
    targets = work / f"{name}.targets"
    lines = []
    for body in bodies:
        target = {"method": "POST", "url": url, "body": base64.b64encode(body).decode()}
        target["header"] = {"Content-Type": ["application/json"]}  # type: ignore[assignment]
        lines.append(json.dumps(target) + "\n")
    targets.write_text("".join(lines))
    results = work / f"{name}.bin"
    argv = [str(peer("vegeta")), "attack", "-format=json", f"-targets={targets}", f"-rate={rate}/1s"]
    argv += [f"-duration={seconds}s", f"-connections={CONNECTIONS}", "-keepalive=true", f"-output={results}"]
    if ca_file is not None:
        argv.append(f"-root-certs={ca_file}")
    subprocess.run(argv, check=True)
    encoded = subprocess.run(
        [str(peer("vegeta")), "encode", "--to=json", str(results)], check=True, capture_output=True, text=True
    ).stdout
    return [json.loads(line) for line in encoded.splitlines() if line]


def summarize(records: list[dict[str, Any]]) -> tuple[list[float], int, int]:
    latencies = [r["latency"] / 1e6 for r in records]
    errors = sum(1 for r in records if r["code"] != 200 or r.get("error"))
    denied = 0
    for r in records:
        if r["code"] == 200 and r.get("body"):
            answer = json.loads(base64.b64decode(r["body"]))
            if "response" in answer and not answer["response"]["allowed"]:
                denied += 1
    return latencies, errors, denied


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    ca = TestCA(work / "ca")
    with running_registry(work / "registry", ca) as registry, opa_server(work / "opa") as opa:
        key, public = registry.cosign_keypair("bench")
        digest = registry.push_image("bench/app", "v1")
        registry.cosign_sign(f"{registry.host}/bench/app@{digest}", key)
        signature = {
            "type": "image-signature",
            "images": [f"{registry.host}/bench/*"],
            "keys": ["k.pub"],
            "files": {"k.pub": public.read_bytes()},
        }
        policies_path = policy_dir(work / "policies", extra={"signed_images": signature})
        policies = PolicySet.load(policies_path)
        count = len(policies.rego) + len(policies.images)
        settings = {"policy_dir": policies_path, "opa_port": opa.port, "registry_ca_file": ca.ca_file}
        with webhook_process(work / "webhook", ca, **settings) as webhook:
            url, context = webhook.url, webhook.context
            bodies = reviews(registry.host)
            for body in bodies:  # warm: tag resolutions and verdicts, as in a webhook that has been running
                httpx.post(f"{url}/validate", content=body, verify=context).raise_for_status()
            cpu_before = cpu_seconds(webhook.pid)
            load = attack("load", f"{url}/validate", bodies, work, rate=RATE, seconds=SECONDS, ca_file=ca.ca_file)
            webhook_cpu = (cpu_seconds(webhook.pid) - cpu_before) / SECONDS * 100
            latencies, errors, denied = summarize(load)
            opa_bodies = [opa_input(body, policies) for body in bodies]
            opa_url = f"{opa.url}/v1/data/edgetrust/decision/violations"
            side: dict[int, tuple[list[float], list[float]]] = {}
            for rate in SIDE_RATES:
                hook_side: list[float] = []
                opa_side: list[float] = []
                for n in range(SIDE_ROUNDS):  # alternating, so both see the same machine state
                    records = attack(
                        f"hook{rate}-{n}", f"{url}/validate", bodies, work, rate=rate, seconds=3, ca_file=ca.ca_file
                    )
                    hook_side += summarize(records)[0]
                    opa_side += summarize(attack(f"opa{rate}-{n}", opa_url, opa_bodies, work, rate=rate, seconds=3))[0]
                side[rate] = (hook_side, opa_side)

    p50, p90, p99 = (percentile(latencies, q) for q in (0.5, 0.9, 0.99))
    print(f"admission_load: {RATE}/s for {SECONDS}s, {count} policies, warm cache, {CONNECTIONS} connections")
    print(
        f"{'sent':>6} {'denied':>6} {'errors':>6} {'p50_ms':>7} {'p90_ms':>7} {'p99_ms':>7} {'max_ms':>7} {'cpu%':>5}"
    )
    print(
        f"{len(latencies):>6} {denied:>6} {errors:>6} {p50:>7.2f} {p90:>7.2f} {p99:>7.2f} "
        f"{max(latencies):>7.2f} {webhook_cpu:>5.0f}"
    )
    print(f"\nadmission_overhead: {SIDE_ROUNDS} x 3 s each, alternating, same reviews")
    print(f"{'rate':>5} {'path':<28} {'n':>5} {'p50_ms':>7} {'p99_ms':>7} {'ratio':>6}")
    ratios = {}
    for rate, (hook_side, opa_side) in side.items():
        w50, o50 = statistics.median(hook_side), statistics.median(opa_side)
        ratios[rate] = w50 / o50
        hook_p99, opa_p99 = percentile(hook_side, 0.99), percentile(opa_side, 0.99)
        print(f"{rate:>5} {'webhook (HTTPS, full path)':<28} {len(hook_side):>5} {w50:>7.3f} {hook_p99:>7.3f}")
        print(
            f"{rate:>5} {'bare OPA decision (HTTP)':<28} {len(opa_side):>5} {o50:>7.3f} {opa_p99:>7.3f} "
            f"{ratios[rate]:>6.2f}"
        )
    for metric, value, unit in (("p99_ms", p99, "ms"), ("p50_ms", p50, "ms"), ("errors", errors, "count")):
        result = {"bench": "admission_load", "metric": metric, "value": round(value, 3), "unit": unit}
        print("RESULT " + json.dumps(result))
    ratio = round(ratios[RATE], 3)
    result = {"bench": "admission_overhead", "metric": "ratio_vs_opa", "value": ratio, "unit": "ratio"}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
