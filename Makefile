# The README's commands. `make run` installs and runs the whole DAG (PROFILE=default);
# `make test` installs, runs `ruff check` and every test. Both create .venv on first use.
VENV ?= .venv
PROFILE ?= default
PYTEST_ARGS ?=
BIN := $(abspath $(VENV))/bin
# DVC stage commands call `python`: make it the project's interpreter.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install run flow stop test

$(VENV)/.installed: pyproject.toml constraints-cpu.txt requirements-judge.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[dev,eval,browser,judge,math,postgres]'
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements-judge.txt
	touch $@

install: $(VENV)/.installed

run: install
	smdm-profile $(PROFILE)
	dvc repro
	@echo "Outputs: data/ models/ runs/ reports/ metrics/ ; tracking: mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db, then http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	@echo "Report: $(CURDIR)/reports/paper.md and $(CURDIR)/reports/paper.html"

# The same DAG as a Prefect flow run: local Prefect + MLflow servers, deployment smdm/full-paper.
flow: install
	smdm-run --profile $(PROFILE)

stop:
	smdm-stop

# The browser test drives Debian's Chromium, the MLflow-on-PostgreSQL test Debian's PostgreSQL
# server (initdb, postgres, pg_isready under /usr/lib/postgresql/N/bin); install them when missing
# (CI runs as root).
test: install
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || true
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql) || true
	ruff check .
	python -m pytest -m "" $(PYTEST_ARGS)
