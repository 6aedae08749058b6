# The two commands (see README.md):
#   make up     set up, then run the operator on the embedded SQLite store (the real driver where the host can)
#   make test   set up, then run every test (lint, types, unit, property, integration as root)
VENV ?= .venv
ARGS ?=

.PHONY: up test setup lint bench bench-fake bench-fleet bench-cli bench-metrics clean
up: setup
	$(VENV)/bin/fleet up $(ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup-host
	bash scripts/setup-host
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

test: setup
	bash scripts/test

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy specs state drivers reconciler

bench: bench-fake bench-fleet bench-cli bench-metrics

bench-fleet: setup
	$(VENV)/bin/python -m tests.bench.bench_fleet

bench-fake: setup
	$(VENV)/bin/python -m tests.bench.bench_fake_10k

bench-cli: setup
	$(VENV)/bin/python -m tests.bench.bench_cli

bench-metrics: setup
	$(VENV)/bin/python -m tests.bench.bench_metrics

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
