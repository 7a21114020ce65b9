# CSLR Experiment Platform — the two commands that matter:
#   make up     set up this machine (venv, Docker engine, .env) and bring the stack up
#   make test   set up everything the tests need and run every tier (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
define run_pytest
	$(PYTEST) $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc
endef

.PHONY: help venv deps engine images init up down test unit contract integration e2e bench lock docs clean

help:
	@echo "make up | down | test | unit | contract | integration | e2e | bench | lock | docs"

$(BIN)/.stamp: requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	touch $@

venv: $(BIN)/.stamp

deps:                      ## system packages the integration tier needs (redis-server, iproute2)
	bash tools/ci-deps.sh

engine: venv               ## install and start the Docker engine; link Compose v2 as a CLI plugin
	bash tools/docker-engine.sh $(VENV)

images: engine             ## local test images (no registry here): Debian rootfs + offline wheels
	bash tools/build-test-images.sh

init: venv
	$(BIN)/inv init

up: engine init
	$(BIN)/inv up

down: venv
	$(BIN)/inv down

unit: venv
	$(call run_pytest,-m "not contract and not integration and not e2e")

contract: venv
	$(call run_pytest,-m contract)

integration: venv deps
	$(call run_pytest,-m integration)

e2e: images
	$(call run_pytest,-m e2e)

test: venv deps images     ## every tier, as CI runs it
	$(call run_pytest,)

bench: venv
	$(BIN)/python bench/generate.py

docs: venv
	$(BIN)/inv schema --docs

lock: venv                 ## re-pin requirements.lock from requirements.in
	$(BIN)/python -m pip install --quiet -r requirements.in
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean:
	rm -rf _build .pytest_cache
