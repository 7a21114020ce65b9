# CSLR Experiment Platform — the two commands that matter:
#   make up     bring the stack up on this machine (uses the Docker you have; see README)
#   make test   set up everything the tests need and run every tier (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help
# The lock files install on CPython 3.11, the version the tests run on (pyproject.toml).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
define run_pytest
	$(PYTEST) $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc
endef

.PHONY: help venv venv-test deps engine ensure-engine wheelhouse bases bases-monitoring images init up down test unit contract integration e2e lint format bench lock docs clean

help:
	@echo "make up | down | test | unit | contract | integration | e2e | lint | bench | lock | docs"
	@echo "make engine  (root, Debian/Ubuntu without any Docker: installs Debian's docker.io)"
	@echo "make bases   (root: local stand-ins of the official base images, docs/images.md)"

# Runtime venv: only what `inv` needs (requirements.lock).
$(BIN)/.stamp-runtime: requirements.lock
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "need CPython 3.11 for the venv (found " + sys.version.split()[0] + "); set PY=/path/to/python3.11")'
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

# Test venv: the runtime set plus the test tiers' tools (requirements-test.lock).
$(BIN)/.stamp-test: $(BIN)/.stamp-runtime requirements-test.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-test.lock
	touch $@

venv: $(BIN)/.stamp-runtime
venv-test: $(BIN)/.stamp-test

deps:                      ## system packages the integration tier needs (redis-server, iproute2)
	bash tools/ci-deps.sh

engine:                    ## explicit: install + start Debian's docker.io (root; refused if another Docker is installed)
	bash tools/docker-engine.sh

ensure-engine:             ## a working engine is used as it is; installs one only where there is no Docker at all
	@bash tools/docker-engine.sh --if-absent

wheelhouse: venv           ## every wheel the images' pip layers need, into wheelhouse/
	$(BIN)/inv wheelhouse

bases: wheelhouse          ## local stand-ins of the official bases (root): tools/build-local-bases.sh
	bash tools/build-local-bases.sh

bases-monitoring:          ## the local Prometheus and exporter bases too (root; services.monitoring under images.source local)
	bash tools/build-local-bases.sh prometheus redis-exporter postgres-exporter

images: bases

init: venv
	$(BIN)/inv init

up: venv ensure-engine init
	$(BIN)/inv up

down: venv
	$(BIN)/inv down

unit: venv-test
	$(call run_pytest,-m "not contract and not integration and not e2e")

contract: venv-test
	$(call run_pytest,-m contract)

integration: venv-test deps
	$(call run_pytest,-m integration)

e2e: venv-test engine bases bases-monitoring
	$(call run_pytest,-m e2e)

lint: venv-test            ## one linter and one formatter, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: venv-test deps engine bases bases-monitoring lint  ## every tier, as CI runs it
	$(call run_pytest,)

bench: venv-test
	$(BIN)/python bench/generate.py

docs: venv
	$(BIN)/inv schema --docs

lock:                      ## re-pin both lock files from the .in files (fresh throwaway venvs)
	rm -rf /tmp/cslr-lock && $(PY) -m venv /tmp/cslr-lock/rt && /tmp/cslr-lock/rt/bin/pip install --quiet -r requirements.in
	/tmp/cslr-lock/rt/bin/pip freeze --exclude-editable > requirements.lock
	$(PY) -m venv /tmp/cslr-lock/test && /tmp/cslr-lock/test/bin/pip install --quiet -r requirements-test.in
	# --all: torch needs setuptools>=77, newer than a fresh venv's, so the lock pins it too (not pip).
	# torch without its local label: `==2.13.0` takes the CPU build where one is offered (a local
	# version sorts above the public one) and PyPI's build elsewhere, instead of failing there.
	/tmp/cslr-lock/test/bin/pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements-test.lock

clean:
	rm -rf _build .pytest_cache
