"""Op benchmarks: `pytest benchmarks/ --benchmark-only` (grouped by op, backends side by side).
`make test` runs them once each with --benchmark-disable, so they cannot rot."""

from __future__ import annotations

import pytest

from gpunn.backends import available, get_backend, passes


@pytest.fixture(scope="session", autouse=True)
def steady_state():
    """Time the ops as a long run makes them: on the CPU, with the compiled element-wise passes
    (which a process otherwise starts after a billion elements through NumPy's calls)."""
    passes.start_now()


@pytest.fixture(params=available())
def bk(request):
    return get_backend(request.param)
