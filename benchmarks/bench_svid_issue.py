"""X.509-SVID issuance (CSR in, signed certificate out) on one core. Target: >= 3,000/s."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetrust.spiffe.id import SpiffeId, TrustDomain
from trustd.server.ca import SpiffeCA

SECONDS = 3.0


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    td = TrustDomain.parse("edge.example")
    ca = SpiffeCA.load_or_create_root(Path(tempfile.mkdtemp()) / "ca", trust_domain=td)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")])
    csrs = [
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        for _ in range(200)
    ]
    ids = [SpiffeId.parse(f"spiffe://edge.example/site/s{i % 20}/node/n{i}") for i in range(200)]
    samples: list[float] = []
    start_all = time.perf_counter()
    i = 0
    while time.perf_counter() - start_all < SECONDS:
        start = time.perf_counter()
        ca.issue_x509_svid(csrs[i % 200], ids[i % 200], ttl=timedelta(hours=4))
        samples.append((time.perf_counter() - start) * 1e6)
        i += 1
    elapsed = time.perf_counter() - start_all
    per_s = len(samples) / elapsed
    samples.sort()
    p99 = samples[int(0.99 * (len(samples) - 1))]
    print("svid_issue: CSR (P-256, PEM) -> X.509-SVID signed by a P-256 CA, one core")
    print(f"{'issued':>8} {'per_s':>9} {'mean_us':>8} {'p99_us':>8}")
    print(f"{len(samples):>8} {per_s:>9.0f} {statistics.fmean(samples):>8.1f} {p99:>8.1f}")
    print("RESULT " + json.dumps({"bench": "svid_issue", "metric": "per_s", "value": round(per_s, 1), "unit": "1/s"}))


if __name__ == "__main__":
    main()
