# Two commands on a fresh machine: `make demo` and `make test` (README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU torch wheel first, so no range below pulls a CUDA build
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.3,<2.14"
	$(BIN)/pip install -q -e ".[web,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tiltflow demo-data $(DEMO_DIR)/data --force
	$(BIN)/tiltflow workflow run tutorial -p $(DEMO_DIR)/project --fresh \
		--set import-movies.files=$(DEMO_DIR)/data --set import-movies.gain=$(DEMO_DIR)/data/gain_ref.gain \
		--set motion-ctf.window=256 --set align.binning=2 --set reconstruct.binning=2
	# (the demo's 2.76 Å/px is the course's 1.38 Å/px binned 2x: its bin 2 is the course's bin 4)
	$(BIN)/tiltflow show -p $(DEMO_DIR)/project
	@echo "Browse the results: $(BIN)/tiltflow view -p $(DEMO_DIR)/project"

# the suite, and the core's public API examples as doctests
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	$(BIN)/python -m pytest -q -p no:cacheprovider --doctest-modules src/tiltflow/core

# the written style (pyproject.toml): ruff, ruff format, mypy
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs
	$(BIN)/mypy
	$(BIN)/mypy benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR)
