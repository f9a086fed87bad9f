# Product-event ETL: Luigi + PostgreSQL + dbt. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
BOOTSTRAP := .bootstrap
PIPENV_VERSION := 2026.10.3
PIPENV := $(shell command -v pipenv 2>/dev/null || echo $(BOOTSTRAP)/bin/pipenv)
VENV := .venv
PY := $(VENV)/bin/python
WORKERS ?= 1

export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_VERBOSITY := -1
export PIPENV_IGNORE_VIRTUALENVS := 1

# The Pipfile names its index as ${PIP_INDEX_URL} so that no registry host is committed;
# take it from pip's own configuration, or pip's built-in default, when it is unset.
ifndef PIP_INDEX_URL
PIP_INDEX_URL := $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[a-z]*\.index-url='\(.*\)'$$/\1/p" | head -n 1)
endif
ifeq ($(strip $(PIP_INDEX_URL)),)
PIP_INDEX_URL := $(shell $(PYTHON) -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')
endif
export PIP_INDEX_URL

# Options every pipeline command takes from make variables; python -m tasks checks their values.
RUN_OPTIONS = --workers "$(WORKERS)" $(if $(FUTURE),--allow-future "$(FUTURE)") $(if $(FORCE),--force "$(FORCE)")

.PHONY: help setup setup-dev browser run-etl backfill load worker luigid luigid-stop runs dbt test test-fast \
	test-warehouse lint clean db-url docs bench pip-index-url

help: ## list the targets (default)
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-15s %s\n", $$1, $$2}'

setup: $(VENV)/.synced ## install what the pipeline runs with (pipenv, then the locked packages) into .venv

setup-dev: $(VENV)/.synced-dev ## setup, plus the test, lint and documentation tools

$(BOOTSTRAP)/bin/pipenv:
	@echo "setup: installing pipenv $(PIPENV_VERSION) into $(BOOTSTRAP)/"
	@$(PYTHON) -m venv $(BOOTSTRAP) && $(BOOTSTRAP)/bin/pip install --quiet pipenv==$(PIPENV_VERSION)

$(VENV)/.synced: Pipfile.lock | $(PIPENV)
	@tools/setup.sh "$(PIPENV)" runtime
	@touch $@

$(VENV)/.synced-dev: $(VENV)/.synced
	@tools/setup.sh "$(PIPENV)" dev
	@touch $@

run-etl: setup ## the whole chain for DATE: download, stage, dbt, report (FORCE=1 reprocesses DATE, WORKERS=N)
	@$(PY) -m tasks run-etl "$(DATE)" $(RUN_OPTIONS)

backfill: setup ## the whole chain for every date from FROM to TO (WORKERS=N runs tasks side by side)
	@$(PY) -m tasks backfill "$(FROM)" "$(TO)" $(RUN_OPTIONS)

load: setup ## download and load staging for every date from history_start to DATE
	@$(PY) -m tasks load "$(DATE)" $(RUN_OPTIONS)

worker: setup ## join the running luigid and run tasks it hands out (WORKERS=N), until stopped
	@$(PY) -m tasks worker --workers "$(WORKERS)"

luigid: setup ## start the Luigi scheduler and web UI on port 8082 in the background
	@$(PY) -m tasks luigid-start

luigid-stop: setup ## stop the Luigi scheduler started by make luigid
	@$(PY) -m tasks luigid-stop

runs: setup ## the recent runs, with their dates, status, counts and durations
	@$(PY) -m tasks runs

dbt: setup ## any dbt command against the pipeline's database, e.g. make dbt ARGS="test --select dim_user"
	@$(PY) -m tasks dbt $(ARGS)

# Debian's chromium drives the browser test of the Luigi UI; without it that check is skipped with a warning.
browser: ## install Debian's chromium when missing (as root, with apt)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium for the browser test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
		fi || echo "warning: could not install chromium; the browser test will be skipped" >&2; }

# The tests run in TEST_WORKERS pytest processes side by side (pytest-xdist), each with its own
# PostgreSQL and S3 servers. A test mostly waits on dbt and the database, so two workers on two cores
# take about half the time of one. A fixed number, not one per core: in a container the core count
# Python sees can be the host's. TEST_WORKERS=0 runs every test in one process.
TEST_WORKERS ?= 2

test: setup-dev browser ## the whole test suite: lint, unit, dbt unit tests, end to end (real PostgreSQL and S3 protocol)
	$(PY) -m pytest -n "$(TEST_WORKERS)"

test-fast: setup-dev ## the tests without the end-to-end runs (under a minute)
	$(PY) -m pytest -n "$(TEST_WORKERS)" -m "not slow"

test-warehouse: setup ## every dbt data test on every row of the warehouse (a build checks only what it changed)
	@$(PY) -m tasks test-warehouse

lint: setup-dev ## ruff (lint and format) and sqlfluff over dbt/
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && (cd dbt && ../$(VENV)/bin/sqlfluff lint .)

pip-index-url: ## print the package index URL in use (for docker compose build)
	@echo "$(PIP_INDEX_URL)"

db-url: setup ## print the URL of the database in use, password redacted
	@$(PY) -m tasks db-url

docs: setup-dev browser ## regenerate the diagrams (Mermaid) and the UI picture in docs/, dbt's docs site in docs/generated/dbt
	@$(PY) -m tools.diagrams --out docs --into docs/architecture.md
	@$(PY) -m tools.screenshot --out docs/luigi-ui.png
	@$(PY) -m tasks dbt docs generate --no-compile --target-path "$(CURDIR)/docs/generated/dbt"

bench: setup-dev ## the benchmark: every scale target as a ratio in one run, written to docs/performance.md
	$(PY) -m tools.benchmark

clean: setup ## stop luigid and the embedded database, remove everything the pipeline wrote (DROP_FOREIGN=1: see README)
	@$(PY) -m tasks clean $(if $(DROP_FOREIGN),--drop-foreign "$(DROP_FOREIGN)")
