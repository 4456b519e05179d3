"""Quote verification on recorded real quotes (tests/data/tpm/quotes.json), one core.

Each iteration is the whole hub-side recipe: parse the AK, check its attributes, verify the signature, parse
TPMS_ATTEST, check the nonce and recompute the PCR digest. Target: p50 <= 200 us.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestation.quote import verify_quote
from attestation.tpm2.public import parse_public
from tests.unit.attestation.evidence import CASES, quote_case

SECONDS_PER_CASE = 1.0


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rows = []
    everything: list[float] = []
    for name in CASES:
        case = quote_case(name)
        samples: list[float] = []
        deadline = time.perf_counter() + SECONDS_PER_CASE
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            verify_quote(
                ak=parse_public(case["ak_public"]),
                attest=case["attest"],
                signature=case["signature"],
                nonce=case["nonce"],
                pcr_values=case["pcr_values"],
            )
            samples.append((time.perf_counter() - start) * 1e6)
        samples.sort()
        everything += samples
        rows.append((name, len(samples), statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]))
    print("quote_verify: recorded swtpm quotes, parse AK + verify, one core")
    print(f"{'case':<18} {'n':>7} {'p50_us':>8} {'p99_us':>8}")
    for name, n, p50, p99 in rows:
        print(f"{name:<18} {n:>7} {p50:>8.1f} {p99:>8.1f}")
    everything.sort()
    p50 = statistics.median(everything)
    p99 = everything[int(0.99 * (len(everything) - 1))]
    for metric, value in (("p50_us", p50), ("p99_us", p99)):
        print(
            "RESULT " + json.dumps({"bench": "quote_verify", "metric": metric, "value": round(value, 1), "unit": "us"})
        )


if __name__ == "__main__":
    main()
