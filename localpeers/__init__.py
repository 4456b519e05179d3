"""Local peers for tests, the demo and benchmarks (swtpm, simulated boot, a simulated fleet, OPA, a registry,
kube-apiserver, PostgreSQL, SPIRE, test hubs and webhooks).

Dev-only: not in the wheel (pyproject excludes it); shipped code never imports it (tests/unit/test_layout.py
checks).
"""
