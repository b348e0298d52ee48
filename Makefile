# The README's commands. Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# AutoAttack (part of the default robustness evaluations) from torchattacks, without its
	# stale pin on requests, which would downgrade MLflow's (its real dependencies are here).
	$(BIN)/python -m pip install --quiet --no-deps 'torchattacks>=3.5'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/study run sweeps/demo.yaml

# The unit tests (no Ray, no server; one torch thread each) in one worker process per core;
# then everything else, one test at a time (each starts its own Ray, servers and `study`
# processes, which use the cores themselves).
UNIT_WORKERS := $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)))')

test: $(STAMP)
	$(BIN)/python -m pytest -m unit -n $(UNIT_WORKERS) --durations=12
	$(BIN)/python -m pytest -m "not unit" --durations=25

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py --json benchmarks/training.json
	$(BIN)/python benchmarks/bench_data.py --json benchmarks/data.json
	$(BIN)/python benchmarks/bench_study.py --json benchmarks/study.json
	$(BIN)/python benchmarks/bench_gpu.py --json benchmarks/gpu.json
	$(BIN)/python benchmarks/bench_evals.py --json benchmarks/evals.json
	$(BIN)/python benchmarks/bench_search.py --json benchmarks/search.json
	$(BIN)/python benchmarks/bench_scale.py --json benchmarks/scale.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf results .pytest_cache
