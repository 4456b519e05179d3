"""Attestation-aware binding: what the node gate costs the webhook (admission/nodegate.py), in this process.

node_gate verify_ms: one ConfigMap's document of `--nodes` nodes and a revocation list of `--revoked` SPIFFE IDs
  verified and parsed (what each replica does once per new document, on its event loop); target < 50 ms at
  1,000 nodes, so a document never stalls reviews for long.
node_gate decision_us: one `refusal(node)` (what every Binding and spec.nodeName review adds); target < 10 µs.
node_gate document_bytes: the document's size (a ConfigMap carries at most 768 KiB with the revocation list).
Usage: bench_node_gate.py [--nodes 1000] [--revoked 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import ec

from admission.nodegate import NodeGate
from edgetrust._internal import kube as kubeapi
from edgetrust.bundles import nodestatus
from edgetrust.bundles.revocations import KEY_ID, verify_revocations
from tests.support.binding_rig import document, revocation_list, signing_key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--revoked", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    private = ec.generate_private_key(ec.SECP256R1())
    key = signing_key(private)
    keys = {KEY_ID: private.public_key()}
    now = time.time()
    nodes = {f"gw-{i:05d}": (now - i % 600, i % 50 == 0) for i in range(args.nodes)}
    blob = document(key, 1, nodes)
    listed = revocation_list(key, 1, [f"spiffe://edge.example/workload/w{i}" for i in range(args.revoked)])
    timings = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        found = nodestatus.verify(blob, keys, cluster="edge-1")
        verify_revocations(listed, keys)
        timings.append((time.perf_counter() - started) * 1000)
    gate = NodeGate(
        kubeapi.KubeConnection(kubeapi.Direct("https://127.0.0.1:1")), namespace="n", keys=keys, cluster="edge-1"
    )
    gate.held = found
    names = [*nodes, "unknown-node"]
    calls = 200_000
    started = time.perf_counter()
    for i in range(calls):
        gate.refusal(names[i % len(names)])
    decision_us = (time.perf_counter() - started) / calls * 1e6
    figures = {
        "verify_ms": (round(statistics.median(timings), 2), "ms"),
        "decision_us": (round(decision_us, 2), "us"),
        "document_bytes": (len(blob), "bytes"),
    }
    print(f"| nodes | revoked IDs | verify (median of {args.rounds}) | decision | document |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.nodes} | {args.revoked} | {figures['verify_ms'][0]} ms | {figures['decision_us'][0]} µs "
        f"| {len(blob)} B |"
    )
    for metric, (value, unit) in figures.items():
        print("RESULT " + json.dumps({"bench": "node_gate", "metric": metric, "value": value, "unit": unit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
