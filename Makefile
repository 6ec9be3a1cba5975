# hostvlan: `make demo` and `make test` start from nothing (apt packages, .venv).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup demo test test-unit test-integration test-e2e lint typecheck clean bench bench-control-plane

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/hostvlan demo

test: setup lint typecheck
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

test-e2e: setup
	$(PY) -m pytest -q tests/e2e

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

# The data path on the testbed (docs/benchmarks.md): JSON on stdout and in bench/results/,
# plots in docs/benchmarks/; <= 15 min on a 2-core VM; not part of `make test`.
bench: setup
	$(VENV)/bin/hostvlan bench data-path --out bench/results --plots docs/benchmarks

# The control plane at the paper's scale (docs/benchmarks.md): minutes, not part of `make test`.
BENCH_SIZES ?= 512 2048 8192
bench-control-plane: setup
	mkdir -p docs/benchmarks
	for h in $(BENCH_SIZES); do \
	  $(VENV)/bin/hostvlan bench control-plane --hosts $$h --vms-per-host 128 --vms-per-tenant 64 --json \
	    --out docs/benchmarks/control-plane-$$h.json > /dev/null || exit 1; \
	done
	$(PY) -m hostvlan.bench.plot docs/benchmarks/control-plane-scale.png \
	  $(foreach h,$(BENCH_SIZES),docs/benchmarks/control-plane-$(h).json)

clean:
	-$(VENV)/bin/hostvlan testbed down --all
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
