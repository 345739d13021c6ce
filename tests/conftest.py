"""Shared fixtures: every backend-aware test runs on each backend that can run here."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from cuda_on_cpu.emulator import build, emulated_backend

from gpunn.backends import cupy_problem, get_backend, jit_cache

CUPY_PROBLEM = cupy_problem()

#: The run's own folder for compiled CPU code (jit_cache.py), so that tests neither read what
#: an earlier run left nor write into the user's cache; made when the run starts.
CACHE_FOLDER: list[str] = []


def pytest_configure(config):
    if jit_cache.ENV not in os.environ:  # processes the tests start inherit it
        CACHE_FOLDER.append(tempfile.mkdtemp(prefix="gpunn-test-cache-"))
        os.environ[jit_cache.ENV] = CACHE_FOLDER[0]


def pytest_unconfigure(config):
    for folder in CACHE_FOLDER:
        shutil.rmtree(folder, ignore_errors=True)

BACKENDS = [
    "numpy",
    pytest.param("cupy", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(CUPY_PROBLEM is not None,
                                                   reason=f"no CUDA device: {CUPY_PROBLEM}")]),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A backend name, once per backend that can run here."""
    return request.param


@pytest.fixture
def bk(backend):
    return get_backend(backend)


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    """kernels.cu built for the CPU (tests/cuda_on_cpu), once per session."""
    lib = build(tmp_path_factory.mktemp("cuda_on_cpu"))
    if isinstance(lib, str):
        pytest.skip(lib)
    return lib


@pytest.fixture(scope="module")
def emulated(harness):
    """The CuPy backend with its kernels run on the CPU (one per test module)."""
    return emulated_backend(harness)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def to_host(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)
