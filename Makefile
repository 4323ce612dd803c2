# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DRUGS ?= 20000

.PHONY: demo test lint typecheck unit integration e2e bench down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[local,dev]"
	touch $(STAMP)

## demo: start the embedded stack, seed $(DRUGS) drugs, sync them and summarise
demo: $(STAMP)
	$(BIN)/drugsync demo --drugs $(DRUGS)

## test: lint, type-check, then unit, integration (real servers) and end-to-end tests
test: lint typecheck
	$(BIN)/pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

bench: $(STAMP)
	$(BIN)/python -m benchmarks.pipeline

down: $(STAMP)
	$(BIN)/drugsync local down

clean: down
	rm -rf .drugsync .pytest_cache .mypy_cache .ruff_cache .hypothesis
