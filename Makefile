# `make run`: create .venv if missing, install simdl, run the default experiment (digits, 64 workers, 7 algorithms, 3 seeds).
# `make test`: same set-up, then the test suite.
# `make bench`: same set-up plus the bench extra (CPU PyTorch), then the quick throughput benchmark (< 3 min).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-installed-stamp
OUT    ?= runs/default

.PHONY: run test lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(BENCH_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/simdl run --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/throughput.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
