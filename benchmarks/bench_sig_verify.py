"""Image signature verification against a TLS registry on loopback, cold (nothing cached) and cached.

Cold: tag -> digest, the `.sig` manifest, the payload blob, an ECDSA P-256 check: three registry round trips.
Cached: the verdict for (digest, policy revision) and a young tag resolution; no I/O.
Targets: cold p50 <= 25 ms, cached p50 <= 0.2 ms. Signatures are written by the real cosign.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admission.images.verifier import ImageVerifier
from admission.metrics import AdmissionMetrics
from admission.policy import PolicySet
from admission.registry import RegistryClient, RegistrySettings
from localpeers.registry import running_registry
from localpeers.tlsca import TestCA
from localpeers.webhook import policy_dir

IMAGES = 20
ROUNDS = 10
CACHED_CALLS = 20_000


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(host: str, ca_file: Path, policies: PolicySet) -> tuple[list[float], list[float]]:
    policy = policies.images[0]
    verifier = ImageVerifier(RegistryClient(RegistrySettings(ca_file=str(ca_file))), AdmissionMetrics())
    references = [f"{host}/bench/app{i}:v1" for i in range(IMAGES)]
    await verifier.verify(references[0], policy)  # connection pool and TLS session warm, as in a running webhook
    cold: list[float] = []
    for _ in range(ROUNDS):
        for reference in references:
            verifier.forget()
            start = time.perf_counter()
            await verifier.verify(reference, policy)
            cold.append((time.perf_counter() - start) * 1000)
    cached: list[float] = []
    for i in range(CACHED_CALLS):
        reference = references[i % IMAGES]
        start = time.perf_counter()
        await verifier.verify(reference, policy)
        cached.append((time.perf_counter() - start) * 1000)
    await verifier.close()
    return cold, cached


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sig-"))
    ca = TestCA(work / "ca")
    with running_registry(work / "registry", ca) as registry:
        key, public = registry.cosign_keypair("bench")
        for i in range(IMAGES):
            digest = registry.push_image(f"bench/app{i}", "v1", content=f"image {i}".encode())
            registry.cosign_sign(f"{registry.host}/bench/app{i}@{digest}", key)
        policies = PolicySet.load(
            policy_dir(
                work / "policies",
                rego=False,
                extra={
                    "signed": {
                        "type": "image-signature",
                        "images": [f"{registry.host}/bench/*"],
                        "keys": ["k.pub"],
                        "files": {"k.pub": public.read_bytes()},
                    }
                },
            )
        )
        cold, cached = asyncio.run(measure(registry.host, ca.ca_file, policies))
    print("sig_verify: cosign keyed signature (ECDSA P-256) on images in a TLS registry on loopback")
    print(f"{'case':<8} {'n':>6} {'p50_ms':>8} {'p99_ms':>8} {'mean_ms':>8}")
    for name, samples in (("cold", cold), ("cached", cached)):
        print(
            f"{name:<8} {len(samples):>6} {percentile(samples, 0.5):>8.3f} {percentile(samples, 0.99):>8.3f} "
            f"{statistics.fmean(samples):>8.3f}"
        )
    for bench, samples in (("sig_verify_cold", cold), ("sig_verify_cached", cached)):
        value = round(percentile(samples, 0.5), 4)
        print("RESULT " + json.dumps({"bench": bench, "metric": "p50_ms", "value": value, "unit": "ms"}))


if __name__ == "__main__":
    main()
