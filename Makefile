# Two commands for a newcomer: `make demo` (the main job, offline) and `make test` (the whole suite).
# Both bootstrap everything from the lock file; only python3 (>= 3.10) and the package registries are needed.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo test test-fast lint bench clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

setup: $(UV)
	$(UV) sync --frozen --python $(PYTHON)

demo: setup
	$(UV) run --frozen python -m devstack.demo

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
test: setup lint
	$(UV) run --frozen pytest -q -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(UV) run --frozen pytest -m "not e2e and not slow" -q

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

bench: setup
	$(UV) run --frozen python -m benchmarks.run

clean:
	rm -rf .venv .tools .run
