# The README's commands. Everything installs into .venv; data lives under TI_DATA_DIR.
# Modules are compiled at install (and ti_pipeline before the tests): every Dagster process (code server,
# run, step, pool worker) imports them, and where PYTHONDONTWRITEBYTECODE is set nothing else would cache
# them (measured: loading the code location 4.1 -> 1.7 CPU-s).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TI_DATA_DIR ?= $(CURDIR)/.ti_data
DAGSTER_HOME ?= $(TI_DATA_DIR)/dagster_home
PYTEST_ARGS ?=

.PHONY: install demo dev test lint bench services clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The demo and the UI share one instance, so `make dev` shows the demo's runs.
demo dev: export DAGSTER_HOME := $(DAGSTER_HOME)

## Sample data, every asset and partition into SQLite under .ti_data, then per-table counts.
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/ti-pipeline demo

## The Dagster UI and daemon on http://127.0.0.1:3000, with the demo's runs.
dev: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

services:
	bash scripts/services.sh

## The whole test suite (starts MariaDB and the other services first).
test: install services
	$(VENV)/bin/ruff check ti_pipeline ti_pipeline_tests bench
	$(PY) -m compileall -q ti_pipeline
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check ti_pipeline ti_pipeline_tests bench

bench: install services
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(TI_DATA_DIR)
