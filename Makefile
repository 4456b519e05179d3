# The two promises of the README: `make demo` and `make test` install what is missing, then run.
PY      := .venv/bin/python
PACKAGES := attestation edgetrust trustd admission syncer

.PHONY: deps demo test lint unit integration bench clean images

deps:
	@hack/install-deps

demo: deps
	@$(PY) -m demo

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# images first: a cold build (~4 min) inside the first chart test would count against its 300 s timeout
test: deps lint images
	$(PY) -m pytest -q -p no:cacheprovider

unit: deps
	$(PY) -m pytest -q tests/unit

integration: deps
	$(PY) -m pytest -q tests/integration

# the edgetrust, OPA and pause images (OCI layouts and docker-archives under ~/.cache/edgetrust/images)
images: deps
	@hack/build-images

bench: deps
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf .demo .mypy_cache .ruff_cache .pytest_cache
