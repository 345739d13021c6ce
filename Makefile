# The two commands a new user needs: `make demo` and `make test`. Each creates .venv when missing
# and installs what it needs; a fresh machine needs only Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA extra matching the driver, on a machine where nvidia-smi answers.
CUDA_MAJOR := $(shell nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$$')
CUDA_EXTRA := $(if $(CUDA_MAJOR),$(if $(filter 13 14 15,$(CUDA_MAJOR)),cuda13,cuda12),)

# Extra `gpunn bench` arguments for gpu-check, to fit a short lease: the later option wins, e.g.
# make gpu-check GPU_BENCH="--workloads small,medium,book --precision fp32,bf16"
GPU_BENCH ?=
# gpu-check: seconds one gpu-marked test may take (where pytest-timeout is installed, as on the
# lent machines) before it fails and the rest go on: a hung test would otherwise eat the lease.
GPU_TEST_TIMEOUT ?= 180
# Other versions of kernels.cu for gpu-check's phases to time beside this one, e.g.
# git show 92d7960:gpunn/backends/cuda/kernels.cu > old-kernels.cu; make gpu-check PHASES_COMPARE=old-kernels.cu
PHASES_COMPARE ?=

.PHONY: demo test lint docs bench gpu-check mutate mutate-barriers clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.demo-deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".$(if $(CUDA_EXTRA),[$(CUDA_EXTRA)],)"
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,docs,mpi]"
	touch $@

demo: $(VENV)/.demo-deps
	$(VENV)/bin/gpunn info
	$(VENV)/bin/gpunn train

# ruff (private names stay private, no tangled functions) and import-linter (imports point down:
# the contracts in pyproject.toml).
lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check gpunn tests benchmarks examples
	$(VENV)/bin/lint-imports --no-logo --no-cache

# The API reference (mkdocs + mkdocstrings, from the docstrings) into site/; warnings are errors.
docs: $(VENV)/.test-deps
	$(VENV)/bin/mkdocs build --strict --quiet

test: lint docs
	$(PY) -m pytest
	$(PY) -m pytest -q benchmarks --benchmark-disable

# gpunn against PyTorch on every backend here. PyTorch is installed into .venv when missing: the
# CPU build (a few hundred MB) where nvidia-smi finds no GPU, the CUDA build (several GB) where it
# does. JAX is measured when importable, never installed.
TORCH_INDEX := $(if $(CUDA_MAJOR),,--index-url https://download.pytorch.org/whl/cpu)
bench: $(VENV)/.test-deps
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(VENV)/bin/gpunn bench --json bench.json --markdown bench.md --plot bench.png

# On a lent GPU machine (system Python with CuPy, PyTorch, JAX; wheels it lacks in .whl/, fetched
# beforehand by shared/gpu/fetch-wheels.sh): the gpu-marked tests, then the GPU benchmark, then
# the one-kernel trainer's phases (benchmarks/one_kernel_phases.py) and what tune_gemms chose
# (benchmarks/gemm_tuning.py); bench.json, bench.md, phases.txt and tuning.txt go to $$OUT (or
# the current folder).
gpu-check:
	set -e; site=$$(mktemp -d); mkdir -p "$${OUT:-.}"; \
	if ls .whl/*.whl >/dev/null 2>&1; then \
	  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$$site" .whl/*.whl; fi; \
	export PYTHONPATH="$$site:$$PWD"; \
	python3 -m gpunn info; \
	python3 -c "import cuda.core" 2>/dev/null || echo "cuda.core does not import here (nvmath-python 1.0 wants it): carry its wheel, ../shared/gpu/fetch-wheels.sh cuda-core"; \
	python3 -m pytest -q -rfEs -m gpu -p no:cacheprovider --ignore=tests/backends/cuda/test_cuda_sources.py \
	  $$(python3 -c "import pytest_timeout" 2>/dev/null && echo --timeout=$(GPU_TEST_TIMEOUT)) tests || status=$$?; \
	python3 -m gpunn bench --backends cupy --repeats 5 --ops $(GPU_BENCH) --json "$${OUT:-.}/bench.json" \
	  --markdown "$${OUT:-.}/bench.md" || status=$$?; \
	python3 benchmarks/one_kernel_phases.py $(if $(PHASES_COMPARE),--compare $(PHASES_COMPARE),) \
	  > "$${OUT:-.}/phases.txt" || status=$$?; \
	cat "$${OUT:-.}/phases.txt"; \
	python3 benchmarks/gemm_tuning.py > "$${OUT:-.}/tuning.txt" || status=$$?; \
	cat "$${OUT:-.}/tuning.txt"; \
	python3 benchmarks/read_ahead.py > "$${OUT:-.}/read_ahead.txt" || status=$$?; \
	cat "$${OUT:-.}/read_ahead.txt"; \
	exit $${status:-0}

# Mutation testing, on demand and not in CI (hours over every core module listed under
# [tool.mutmut] in pyproject.toml): mutmut plants one-line bugs and runs the suite against each; a
# survivor is a bug the tests would not notice. `make mutate ONLY='gpunn.losses*'` narrows the
# run; `$(VENV)/bin/mutmut show <name>` shows a survivor's diff.
$(VENV)/.mutate-deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,mutate]"
	touch $@

mutate: $(VENV)/.mutate-deps
	$(VENV)/bin/mutmut run $(ONLY)
	$(VENV)/bin/mutmut results

# The same for kernels.cu's __syncthreads() (tests/cuda_on_cpu/barrier_mutants.py): each taken
# out in turn, the kernels run on the CPU; a barrier no test needed is a race the tests would miss.
mutate-barriers: $(VENV)/.test-deps
	$(PY) tests/cuda_on_cpu/barrier_mutants.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis mutants site *.egg-info
