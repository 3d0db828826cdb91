# Set-up is part of every target: a fresh clone needs only `make bench` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?=
ARGS ?=

.PHONY: setup bench bench-quick test test-slow mutation lint perf clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: pip then takes the local CPU wheel and never resolves a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,models]" "torch==2.13.0" "torchvision==0.28.0"
	@if $(BIN)/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
		echo "error: CUDA packages (nvidia-*) were installed; torch must stay the CPU wheel" >&2; exit 1; fi
	touch $(STAMP)

setup: $(STAMP)

bench: setup
	$(BIN)/python -m bench run $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

bench-quick: setup
	$(BIN)/python -m bench run --profile quick $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(ARGS)

# mutation testing of the scoring core (tests/mutate.py, docs/testing.md): about 10-15 min on 2
# cores; fails when a module's killed/total falls below tests/mutation_score.json
mutation: setup
	OMP_NUM_THREADS=1 $(BIN)/python tests/mutate.py --check $(ARGS)

lint: setup
	$(BIN)/ruff check .

perf: setup
	$(BIN)/python -m bench perf all

clean:
	rm -rf results .cache
