# The two commands a new user needs: `make demo` and `make test`. Each creates .venv when missing
# and installs what it needs; a fresh machine needs only Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA extra matching the driver, on a machine where nvidia-smi answers.
CUDA_MAJOR := $(shell nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$$')
CUDA_EXTRA := $(if $(CUDA_MAJOR),$(if $(filter 13 14 15,$(CUDA_MAJOR)),cuda13,cuda12),)

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.demo-deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".$(if $(CUDA_EXTRA),[$(CUDA_EXTRA)],)"
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.demo-deps
	$(VENV)/bin/gpunn info
	$(VENV)/bin/gpunn train

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check gpunn tests benchmarks

test: lint
	$(PY) -m pytest

# Step-time ratios against PyTorch CPU (installs torch into .venv when missing).
bench: $(VENV)/.test-deps
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) benchmarks/step_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
