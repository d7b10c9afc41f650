# The README's two commands are `make run` and `make test`; each installs what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := infra/stack
# Every target that talks to the stack reads its addresses from `infra/stack env`.
WITH_ENV = eval "$$($(STACK) env)" &&
TEST_DB ?= nexes_test
DEMO_ORDERS ?= 100000
GRAPHIQL := nexes/http/graphiql/static/vendor/graphiql.min.js

.PHONY: venv up down run test test-dates test-cluster test-rabbitmq drills drill-typesense drill-replica drill-switchover drill-api-kill drill-rolling drill-restore drill-import-kill drill-broker-restart lint check-packaging bench lock seed migrate graphiql chromium spa

venv: $(VENV)/.installed $(GRAPHIQL)

# The development venv: the runtime lock's packages plus the tools (requirements-dev.lock),
# and nexes itself, editable. infra/mkvenv makes the venv (and on Debian without
# python3-venv, installs it first).
$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	infra/mkvenv $(PYTHON) $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# GraphiQL's plain script builds, from the npm registry (web/graphiql pins them), copied into
# the package as data: nexes serves them with no network (infra/graphiql).
graphiql: $(GRAPHIQL)
$(GRAPHIQL): web/graphiql/package.json web/graphiql/package-lock.json infra/graphiql
	infra/graphiql

# The reference SPA (examples/spa: urql and Vite from npm, the lock without registry
# addresses); `make run` serves its dist/ at /app and registers its trusted documents.
SPA := examples/spa/dist/index.html
spa: $(SPA)
$(SPA): examples/spa/package.json examples/spa/package-lock.json examples/spa/index.html examples/spa/vite.config.js examples/spa/documents.mjs $(wildcard examples/spa/src/*.* examples/spa/src/documents/*.graphql)
	npm ci --prefix examples/spa --ignore-scripts --no-audit --no-fund --loglevel=error
	npm run --prefix examples/spa build

# Debian's chromium, which the browser tests drive through Playwright (infra/chromium).
chromium:
	infra/chromium

# Re-pin: pip resolves requirements.in in one fresh venv (the runtime lock), then
# requirements-dev.in in another, held to the runtime lock's versions; pip freeze writes
# names and versions. It may move unpinned indirect dependencies: review the diff.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV) && infra/mkvenv $(PYTHON) $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --disable-pip-version-check -r requirements.in
	$(LOCK_VENV)/bin/pip freeze --exclude-editable > requirements.lock.new
	rm -rf $(LOCK_VENV) && infra/mkvenv $(PYTHON) $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.in -c requirements.lock.new
	$(LOCK_VENV)/bin/pip freeze --exclude-editable > requirements-dev.lock.new
	rm -rf $(LOCK_VENV)
	mv requirements.lock.new requirements.lock && mv requirements-dev.lock.new requirements-dev.lock

# A plain (non-editable) `pip install .` into a new venv, then `nexes --help`, every
# module imported and the package data checked from outside the checkout. Not part of
# `make test`: it installs every package anew (the Typesense wheel alone is 338 MB).
check-packaging: $(GRAPHIQL)
	PYTHON=$(PYTHON) infra/check-packaging

up: venv
	$(STACK) up
	$(WITH_ENV) $(BIN)/nexes migrate

down:
	$(STACK) down

migrate: venv
	$(WITH_ENV) $(BIN)/nexes migrate

seed: up
	$(WITH_ENV) $(BIN)/nexes seed --orders $(DEMO_ORDERS)

run: up spa
	$(WITH_ENV) $(BIN)/nexes seed --orders $(DEMO_ORDERS) --if-empty
	$(WITH_ENV) $(BIN)/nexes documents add examples/spa/dist/documents/*.graphql
	$(WITH_ENV) NEXES_ENV=development NEXES_SPA_DIR=$(CURDIR)/examples/spa/dist $(BIN)/nexes dev --host 127.0.0.1 --port 8000

test: venv chromium spa
	$(STACK) up
	$(WITH_ENV) NEXES_TEST_DB=$(TEST_DB) $(BIN)/pytest --ignore=tests/cluster

# More than one of each (issue 20): a stack of its own, two replicas, three Typesense
# nodes and a private RabbitMQ, state in NEXES_CLUSTER_STACK_DIR (default /tmp/nexes-cluster-
# <hash of the checkout>), ports from NEXES_CLUSTER_PORT_BASE (default 16430, apart from the
# default stack's). `make down`/`reset` do not touch it: `export` the two and run infra/stack.
CLUSTER := NEXES_STACK_DIR="$${NEXES_CLUSTER_STACK_DIR:-/tmp/nexes-cluster-$$(printf %s "$(CURDIR)" | sha256sum | cut -c1-10)}" \
	NEXES_STACK_PORT_BASE="$${NEXES_CLUSTER_PORT_BASE:-16430}" \
	NEXES_STACK_REPLICAS=2 NEXES_STACK_TYPESENSE_NODES=3 NEXES_STACK_BROKER=rabbitmq

# tests/cluster against that stack: replicas and switchovers, Typesense node failures,
# both brokers. Not part of `make test` (CI runs it as a step of its own).
test-cluster: venv
	export $(CLUSTER) && $(STACK) up && $(WITH_ENV) NEXES_TEST_DB=$(TEST_DB) $(BIN)/pytest tests/cluster

# The broker tests against RabbitMQ: tests/cluster/test_brokers.py (each on both brokers),
# then every test of `make test` that runs Dramatiq workers or reads what was enqueued, again
# with NEXES_BROKER_URL on RabbitMQ (they send, empty, count and take messages through
# tests/support/brokers.py, on either broker).
BROKER_TESTS := tests/test_import_e2e.py tests/test_import_crash.py tests/test_import_api.py tests/test_hostile_uploads.py tests/test_isolation.py tests/test_ops_workers.py \
	tests/test_telemetry_e2e.py \
	tests/test_search_paths.py::test_the_scheduled_sweep_indexes_changes_whose_sync_request_was_never_sent_or_was_lost \
	tests/test_search.py::test_mutations_and_imports_reach_search_through_the_worker_within_the_sync_interval \
	tests/test_tracing.py::test_an_import_carries_the_trace_to_its_job_its_message_and_the_workers_logs_and_sql \
	tests/test_audit.py::test_reconcile_and_reindex_write_their_row_when_sent \
	tests/test_audit.py::test_an_upload_is_owned_by_its_uploader_and_accepted_under_its_request_id \
	tests/test_mutations.py::test_reconcile_dashboard_needs_the_admin_role_and_enqueues_the_job \
	tests/test_spa_browser.py
test-rabbitmq: venv chromium spa
	export $(CLUSTER) && $(STACK) up && $(WITH_ENV) NEXES_TEST_DB=$(TEST_DB) $(BIN)/pytest tests/cluster/test_brokers.py \
	  && $(WITH_ENV) NEXES_BROKER_URL="$$NEXES_RABBITMQ_URL" NEXES_TEST_DB=$(TEST_DB) $(BIN)/pytest $(BROKER_TESTS)

# The date-sensitive tests on other days of the year, PostgreSQL under libfaketime
# (infra/test-dates); a stack of its own per day. Not part of `make test`.
test-dates: venv
	infra/test-dates

# Issue 20's failure drills (bench/drills.py, figures in bench/README.md): each on a stack
# with only the parts its fault needs, at 1M orders (DRILL_ORDERS), state in
# NEXES_DRILL_STACK_DIR-pg / -ts (default /tmp/nexes-drill-<hash>), ports from
# NEXES_DRILL_PORT_BASE (default 16470). The Typesense drill runs with one replica and
# three Typesense nodes; the others with two replicas and one node. One stack at a time.
DRILL_ORDERS ?= 1000000
DRILL_ARGS ?=
DRILL_STACK = NEXES_STACK_DIR="$${NEXES_DRILL_STACK_DIR:-/tmp/nexes-drill-$$(printf %s "$(CURDIR)" | sha256sum | cut -c1-10)}-$(1)" \
	NEXES_STACK_PORT_BASE="$${NEXES_DRILL_PORT_BASE:-16470}"
DRILL_PG = $(call DRILL_STACK,pg) NEXES_STACK_REPLICAS=2 NEXES_STACK_TYPESENSE_NODES=1
DRILL_TS = $(call DRILL_STACK,ts) NEXES_STACK_REPLICAS=1 NEXES_STACK_TYPESENSE_NODES=3

drill-typesense: venv
	export $(DRILL_PG) && $(STACK) down
	export $(DRILL_TS) && $(STACK) up && $(WITH_ENV) $(BIN)/python -m bench.drills typesense --orders $(DRILL_ORDERS) $(DRILL_ARGS)

drill-replica drill-switchover drill-api-kill drill-rolling: drill-%: venv
	export $(DRILL_TS) && $(STACK) down
	export $(DRILL_PG) && $(STACK) up && $(WITH_ENV) $(BIN)/python -m bench.drills $* --orders $(DRILL_ORDERS) $(DRILL_ARGS)

# Backup and restore (bench/restore_drill.py): base backup, WAL archived, restore to a point
# in time, Nexes and its search index on the restored server.
drill-restore: venv
	export $(DRILL_TS) && $(STACK) down
	export $(DRILL_PG) && $(STACK) up && $(WITH_ENV) $(BIN)/python -m bench.restore_drill --orders $(DRILL_ORDERS)

# The job drills (bench/import_drills.py): a 200k-order import while the worker holding it
# is SIGKILLed twice (drill-import-kill), or while the broker restarts (drill-broker-restart),
# on a stack with one replica, one Typesense node and RabbitMQ (state in
# NEXES_DRILL_STACK_DIR-jobs); DRILL_BROKER=redis (default) or rabbitmq picks the broker.
DRILL_BROKER ?= redis
DRILL_JOBS = $(call DRILL_STACK,jobs) NEXES_STACK_REPLICAS=1 NEXES_STACK_TYPESENSE_NODES=1 NEXES_STACK_BROKER=rabbitmq

drill-import-kill drill-broker-restart: drill-%: venv
	export $(DRILL_PG) && $(STACK) down
	export $(DRILL_TS) && $(STACK) down
	export $(DRILL_JOBS) && $(STACK) up && $(WITH_ENV) $(BIN)/python -m bench.import_drills \
	  $(patsubst import-%,%,$*) --broker $(DRILL_BROKER) $(DRILL_ARGS)

drills: drill-replica drill-switchover drill-api-kill drill-rolling drill-typesense drill-restore drill-import-kill drill-broker-restart

lint: venv
	$(BIN)/ruff check nexes tests bench infra/stack infra/test-dates
	$(BIN)/ruff format --check nexes tests bench infra/stack infra/test-dates
	$(BIN)/mypy
	$(BIN)/deptry .
	$(BIN)/lint-imports

bench: up
	$(WITH_ENV) $(BIN)/python -m bench.run
