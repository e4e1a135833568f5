# penn — every target calls the same commands the README shows.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
ARGS    ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-full run run-lumbar sweep bench bench-accuracy lint format clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed ## create .venv (torch==2.13.0 CPU first, then penn) — idempotent

test: setup ## run the test suite (under 5 minutes on 2 CPU cores)
	$(BIN)/python -m pytest -m "not slow" -q

test-full: setup ## run every test, slow ones included
	$(BIN)/python -m pytest -q

run: setup ## train, calibrate and test PENN (recipe penn_phantom) on the built-in phantom (ARGS=hydra overrides)
	$(BIN)/python -m penn.run recipe=penn_phantom $(ARGS)

run-lumbar: setup ## the same on the real lumbar scans ($$PENN_DATA_ROOT/lumbar-vb)
	$(BIN)/python -m penn.run data=lumbar_vb recipe=penn_lumbar_vb $(ARGS)

sweep: setup ## the Fig. 6 grid of hidden layers x nodes (Hydra multirun)
	$(BIN)/python -m penn.run +experiment=sweep_layers $(ARGS)

bench: setup ## speed benchmarks: prints a table, writes docs/results/bench.json
	$(BIN)/python experiments/bench.py $(ARGS)

bench-accuracy: setup ## trains the lumbar recipes, prints in-domain and external Dice and times
	$(BIN)/python experiments/bench_accuracy.py $(ARGS)

lint: setup ## ruff
	$(BIN)/ruff check penn tests experiments

format: setup ## ruff format + import sorting
	$(BIN)/ruff check --fix penn tests experiments
	$(BIN)/ruff format penn tests experiments

clean: ## remove run outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache lightning_logs
