# The commands README.md tells a user to type. Each sets up .venv first when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Run the embedded default: the bundled demo pipeline, offline, into runs/demo.
demo: $(STAMP)
	$(BIN)/curate run

## Run the test suite (GPU tests skip without a GPU).
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check curation manifests pipelines training tests benchmarks
	$(BIN)/ruff format --check curation manifests pipelines training tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/download.py

clean:
	rm -rf runs .pytest_cache
