# Two commands: `make run` and `make test`. Everything installs into .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= OpenNLPLab/TransNormerLLM-7B
ARGS ?=
# Where no NVIDIA GPU is visible, take the CPU build of torch (a bare `torch` pulls a multi-GB
# CUDA build); with a GPU, any recent torch does. Override with `make TORCH_SPEC=...`.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(HAS_GPU),yes)
TORCH_SPEC ?= torch>=2.4
EXTRAS ?= worker
else
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= worker
endif
TORCH_INDEX ?=

.PHONY: run test lint fmt install install-dev clean bench-engine bench-queue

$(BIN)/python:
	@echo "==> creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> upgrading pip"
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	@echo "==> installing $(TORCH_SPEC) (CPU build unless a GPU is visible; minutes the first time)"
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
	  || $(BIN)/python -m pip install -q "$(TORCH_SPEC)" --index-url https://download.pytorch.org/whl/cpu
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	@echo "==> installing tnllm and its dependencies ([$(EXTRAS)])"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	@echo "==> installing the test and lint tools ([dev])"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make run [MODEL=demo|PATH|MODEL_ID] [ARGS=...]: start Redis, worker(s), API and Flower
run: $(VENV)/.installed
	@echo "==> starting tnllm (model $(MODEL)): Redis, worker, API and Flower"
	$(BIN)/tnllm up --from-make --model "$(MODEL)" $(ARGS)

## make test: install dev dependencies and run every test
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-engine: $(VENV)/.installed-dev
	$(BIN)/python -m bench.engine $(ARGS)

bench-queue: $(VENV)/.installed-dev
	$(BIN)/python -m bench.queue_overhead $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
