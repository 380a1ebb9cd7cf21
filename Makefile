# Two commands for a newcomer: `make demo` (the main job, offline) and `make test` (the whole suite).
# Both bootstrap everything from the lock file; only python3 (>= 3.10) and the package registries are needed.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo test test-newest test-oldest test-next test-fast lint bench clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

setup: $(UV)
	$(UV) sync --frozen --python $(PYTHON)

demo: setup
	$(UV) run --frozen python -m devstack.demo

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
define pytest_strict
	$(1) -m pytest $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc
endef

# The whole suite on the newest supported Airflow (locked in uv.lock), then the fast suites on the
# oldest supported Airflow (requirements/oldest-airflow.txt) and on the next Airflow's newest
# pre-release (requirements/next-airflow.txt), each in a clean environment of its own.
test: setup lint test-newest test-oldest test-next

test-newest: setup
	$(call pytest_strict,$(UV) run --frozen python,-q -ra)

test-oldest: $(UV)
	$(UV) venv -q --allow-existing .venv-oldest --python $(PYTHON)
	VIRTUAL_ENV=.venv-oldest $(UV) pip install -q -r requirements/oldest-airflow.txt
	VIRTUAL_ENV=.venv-oldest $(UV) pip install -q --no-deps -e .
	$(call pytest_strict,.venv-oldest/bin/python,-q -ra -m "not e2e and not slow" tests/unit tests/integration tests/example_dags)

# The next Airflow minor before its release (3.4.0b2 today; it needs Python >= 3.11), so breakage is
# known before users hit it. Regenerate the pins when a newer pre-release appears:
#   uv pip compile requirements/next-airflow.in --prerelease allow --python-version 3.11 -o requirements/next-airflow.txt
NEXT_PYTHON ?= $(or $(shell command -v python3.11 2>/dev/null),$(PYTHON))
test-next: $(UV)
	$(UV) venv -q --allow-existing .venv-next --python $(NEXT_PYTHON)
	VIRTUAL_ENV=.venv-next $(UV) pip install -q -r requirements/next-airflow.txt
	VIRTUAL_ENV=.venv-next $(UV) pip install -q --no-deps -e .
	$(call pytest_strict,.venv-next/bin/python,-q -ra -m "not e2e and not slow" tests/unit tests/integration tests/example_dags)

test-fast: setup
	$(UV) run --frozen pytest -m "not e2e and not slow" -q

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

bench: setup
	$(UV) run --frozen python -m benchmarks.run

clean:
	rm -rf .venv .venv-oldest .venv-next .tools .run
