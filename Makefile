# hostvlan: `make demo` and `make test` start from nothing (apt packages, .venv).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: setup demo test test-unit test-integration test-e2e lint typecheck clean

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

clean:
	-$(VENV)/bin/hostvlan testbed down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
