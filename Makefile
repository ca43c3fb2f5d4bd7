# Batchloop — every target installs what it needs first (uv + the locked environment).
SHELL := /bin/bash
PY_BOOT ?= python3
UV_VERSION := 0.13.9
BOOT := $(CURDIR)/.venv-boot
UV := $(BOOT)/bin/uv
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python

export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export MLCORE_HOME ?= $(CURDIR)/.mlcore
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS := True
export AIRFLOW__API__HOST := 127.0.0.1
export AIRFLOW__API__PORT := 8080
export AIRFLOW__CORE__PARALLELISM ?= 4
# LocalExecutor that imports the tasks' libraries once before forking (plugins/batchloop_airflow/executor.py)
export AIRFLOW__CORE__EXECUTOR ?= batchloop_airflow.executor.PreloadingLocalExecutor
export PYTHONPATH := $(CURDIR)/plugins
export PATH := $(VENV)/bin:$(PATH)
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore::FutureWarning

.PHONY: install browser demo test test-slow test-live lint up shell env bench bench-quick clean

$(UV):
	$(PY_BOOT) -m venv $(BOOT)
	$(BOOT)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PY_BOOT)
	touch $@

install: $(VENV)/.synced ## locked environment in .venv

browser: ## Debian's chromium + chromium-driver (the UI view's browser test)
	bash scripts/ensure_browser.sh

$(AIRFLOW_HOME)/airflow.db: $(VENV)/.synced
	mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate >/dev/null

PROBLEM ?=

demo: install ## the whole loop through Airflow (fresh state): census, then the other two briefly; PROBLEM=<name> runs one family whole
	rm -rf $(MLCORE_HOME) $(AIRFLOW_HOME)
	$(MAKE) --no-print-directory $(AIRFLOW_HOME)/airflow.db
	$(VENV)/bin/mlcore init
	$(PY) scripts/demo.py $(PROBLEM)

test: install browser ## the test suite (needs PostgreSQL on 127.0.0.1:5432 and Redis on :6379)
	$(PY) -m pytest -q --durations=25

test-slow: install ## tests marked slow (full-size data)
	$(PY) -m pytest -q -m slow

test-live: install browser ## tests that start a live Airflow (scheduler, api-server, browser); CI runs them too
	$(PY) -m pytest -q --durations=15 -m live

BENCHES := ingest promotion drift materialize online_read scoring orchestration freshness scale categories stream

bench: install ## every benchmark, full size (about 2 h; results go in benchmarks/BENCHMARKS.md)
	set -e; for b in $(BENCHES); do echo "== bench_$$b"; $(PY) benchmarks/bench_$$b.py; done

bench-quick: install ## every benchmark in quick mode (smoke run, a few minutes; figures mean little)
	set -e; for b in $(BENCHES); do echo "== bench_$$b --quick"; $(PY) benchmarks/bench_$$b.py --quick; done

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

up: install $(AIRFLOW_HOME)/airflow.db ## Airflow UI + scheduler on http://127.0.0.1:8080 (Ctrl-C stops)
	$(VENV)/bin/mlcore init
	exec $(PY) scripts/up.py

shell: install ## a shell with the project's environment (venv on PATH, AIRFLOW_HOME, MLCORE_HOME): run RUNBOOK commands here
	@echo "Batchloop shell: AIRFLOW_HOME=$(AIRFLOW_HOME) MLCORE_HOME=$(MLCORE_HOME); exit to leave"
	@exec $${SHELL:-/bin/bash} -i

ENV_VARS := PATH PYTHONPATH AIRFLOW_HOME MLCORE_HOME AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__PLUGINS_FOLDER \
	AIRFLOW__CORE__LOAD_EXAMPLES AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS AIRFLOW__API__HOST AIRFLOW__API__PORT \
	AIRFLOW__CORE__PARALLELISM AIRFLOW__CORE__EXECUTOR PYTHONWARNINGS

env: ## the same environment as export lines: eval "$$(make -s env)"
	@for v in $(ENV_VARS); do printf 'export %s=%q\n' "$$v" "$${!v}"; done

clean:
	rm -rf $(MLCORE_HOME) $(AIRFLOW_HOME)
