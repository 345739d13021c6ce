"""Op benchmarks: `pytest benchmarks/ --benchmark-only` (grouped by op, backends side by side).
`make test` runs them once each with --benchmark-disable, so they cannot rot."""

from __future__ import annotations

import pytest

from gpunn.backends import available, get_backend


@pytest.fixture(params=available())
def bk(request):
    return get_backend(request.param)
