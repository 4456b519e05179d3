"""Prometheus metrics of one webhook instance, in its own registry (no process globals, tests build their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AdmissionMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "edgetrust_admission_decisions",
            "Policy outcomes per admission request (allowed, denied, warned, audited, dryrun, error).",
            ["policy", "result"],
            registry=self.registry,
        )
        self.requests = Counter(
            "edgetrust_admission_requests", "Admission answers by verdict.", ["verdict"], registry=self.registry
        )
        self.latency = Histogram(
            "edgetrust_admission_latency_seconds",
            "Time from request body to answer.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "edgetrust_admission_signature_cache_hits",
            "Image verdicts answered from the cache.",
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "edgetrust_admission_signature_cache_misses",
            "Image verdicts that needed the registry.",
            registry=self.registry,
        )
        self.offline_admits = Counter(
            "edgetrust_admission_offline_admits",
            "Images admitted from the cache because the registry could not be reached.",
            registry=self.registry,
        )
        self.registry_errors = Counter(
            "edgetrust_admission_registry_errors", "Registry failures by kind.", ["code"], registry=self.registry
        )
        self.opa_errors = Counter(
            "edgetrust_admission_opa_errors", "OPA decisions that could not be made.", ["code"], registry=self.registry
        )

        self.swaps = Counter(
            "edgetrust_admission_policy_swaps",
            "Policy sets swapped in without a restart (applied) or refused, the old set staying (failed).",
            ["result"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
