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

define require_date
	@test -n "$(DATE)" || { echo "error: give a date, e.g. make $@ DATE=2024-04-30" >&2; exit 2; }
endef

.PHONY: help setup browser run-etl backfill luigid luigid-stop load test clean db-url docs bench pip-index-url

help: ## list the targets (default)
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.synced ## install pipenv if missing, then the locked packages into .venv (idempotent)

$(VENV)/.synced: Pipfile.lock
	@command -v pipenv >/dev/null || test -x $(BOOTSTRAP)/bin/pipenv || { \
		$(PYTHON) -m venv $(BOOTSTRAP) && $(BOOTSTRAP)/bin/pip install --quiet pipenv==$(PIPENV_VERSION); }
	$(PIPENV) sync --dev
	@touch $@

run-etl: setup ## the whole chain for DATE: download, stage, dbt, report (FORCE=1 reprocesses DATE, WORKERS=N)
	$(require_date)
	@$(PY) -m tasks run-etl "$(DATE)" --workers $(WORKERS) $(if $(filter 1 yes true,$(FORCE)),--force)

backfill: setup ## the whole chain for every date from FROM to TO (WORKERS=N loads in parallel)
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "error: give a range, e.g. make backfill FROM=2024-04-01 TO=2024-04-30" >&2; exit 2; }
	@$(PY) -m tasks backfill "$(FROM)" "$(TO)" --workers $(WORKERS)

luigid: setup ## start the Luigi scheduler and web UI on port 8082 in the background
	@$(PY) -m tasks luigid-start

luigid-stop: setup ## stop the Luigi scheduler started by make luigid
	@$(PY) -m tasks luigid-stop

load: setup ## load staging for every date from history_start to DATE (WORKERS=N)
	$(require_date)
	@$(PY) -m tasks load "$(DATE)" --workers $(WORKERS)

# Debian's chromium drives the browser test of the Luigi UI; without it that check is skipped with a warning.
browser: ## install Debian's chromium when missing (as root, with apt)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium for the browser test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
		fi || echo "warning: could not install chromium; the browser test will be skipped" >&2; }

test: setup browser ## run the test suite
	$(PY) -m pytest

pip-index-url: ## print the package index URL in use (for docker compose build)
	@echo "$(PIP_INDEX_URL)"

db-url: setup ## print the URL of the database in use, password redacted
	@$(PY) -m tasks db-url

docs: setup ## regenerate docs/*.svg from the code, and dbt's docs site in docs/generated/dbt
	@$(PY) -m tasks.diagrams --out docs
	@$(PY) -m tasks.diagrams --out docs --dbt-docs

bench: setup ## load benchmark: generated data, rows/s and peak memory (EVENTS_PER_DAY=, DAYS=)
	$(PY) tests/benchmark.py $(if $(EVENTS_PER_DAY),--events-per-day $(EVENTS_PER_DAY)) $(if $(DAYS),--days $(DAYS))

clean: setup ## stop luigid and the embedded database, remove everything the pipeline wrote
	@$(PY) -m tasks clean
