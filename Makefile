# The two commands of README.md live here: `make up` (the embedded environment) and
# `make test` (install what the suite needs, idempotently, then run all of it).
SHELL := /bin/bash
export KUBESANDBOX_CACHE ?= $(HOME)/.cache/kubesandbox
export CARGO_TARGET_DIR ?= $(shell bash devenv/cargo-target-dir)
export GOTOOLCHAIN := local
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: deps test lint unit crds up down

## Install everything the suite and the embedded environment need (idempotent, cached).
deps:
	bash devenv/install-deps.sh

## Install, then run every quality gate and every test.
test: deps
	bash devenv/run-tests.sh

## Quality gates only (ruff, mypy --strict, import-linter, CRD staleness).
lint:
	bash devenv/run-tests.sh lint

## Regenerate crds/ and the chart's helm/kubesandbox/crds/ from the API models.
crds:
	.venv/bin/python -m kubesandbox_api.crdgen --write

## Bring up the embedded environment; writes .kubesandbox/kubeconfig.
up: deps
	.venv/bin/kubesandbox-devenv up

## Stop everything `make up` started.
down:
	@if [ -x .venv/bin/kubesandbox-devenv ]; then .venv/bin/kubesandbox-devenv down; fi
