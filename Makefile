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
export PYTHONPATH := $(CURDIR)/plugins
export PATH := $(VENV)/bin:$(PATH)
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore::FutureWarning

.PHONY: install browser demo test test-slow lint up bench clean

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

demo: install ## the whole loop through Airflow on the four yearly batches (fresh state)
	rm -rf $(MLCORE_HOME) $(AIRFLOW_HOME)
	$(MAKE) --no-print-directory $(AIRFLOW_HOME)/airflow.db
	$(VENV)/bin/mlcore init
	$(PY) scripts/demo.py

test: install browser ## the test suite (needs PostgreSQL on 127.0.0.1:5432 and Redis on :6379)
	$(PY) -m pytest -q

test-slow: install ## tests marked slow (full-size data)
	$(PY) -m pytest -q -m slow

bench: install ## ratio benchmarks (results in benchmarks/BENCHMARKS.md)
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_promotion.py
	$(PY) benchmarks/bench_drift.py
	$(PY) benchmarks/bench_materialize.py
	$(PY) benchmarks/bench_online_read.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

up: install $(AIRFLOW_HOME)/airflow.db ## Airflow UI + scheduler on http://127.0.0.1:8080 (Ctrl-C stops)
	$(VENV)/bin/mlcore init
	exec $(PY) scripts/up.py

clean:
	rm -rf $(MLCORE_HOME) $(AIRFLOW_HOME)
