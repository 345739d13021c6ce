"""gpunn/backends/denormals.py: denormal numbers flushed to zero inside the block, in compiled
code and NumPy alike, and the CPU's register as it was after it."""

from __future__ import annotations

import numpy as np
import pytest

from gpunn.backends import denormals

pytestmark = pytest.mark.skipif(denormals.why_not() is not None,
                                reason=f"no denormal flush here: {denormals.why_not()}")

TINY = np.finfo(np.float32).tiny  # the smallest normal float32, 1.2e-38


def products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import numba

    return numba.njit(lambda a, b: a * b)(a, b)


def test_inside_the_block_denormal_results_and_operands_are_zero():
    small, denormal = np.float32([1e-30]), np.float32([1e-40])
    assert 0 < (small * np.float32(1e-10))[0] < TINY  # IEEE: a denormal result
    with denormals.flushed():
        assert products(small, np.float32([1e-10]))[0] == 0  # flush to zero
        assert products(denormal, np.float32([1e10]))[0] == 0  # denormals are zero (else 1e-30)
        assert (small * np.float32(1e-10))[0] == 0  # NumPy in the same thread too
    assert products(small, np.float32([1e-10]))[0] > 0
    assert products(denormal, np.float32([1e10]))[0] == np.float32(1e-40) * np.float32(1e10)


def control() -> int:
    """MXCSR less its sticky status flags (bits 0-5, which any arithmetic may set)."""
    return denormals.mxcsr() & ~0x3F


def test_the_register_is_put_back_as_it_was_by_exception_or_not():
    before = control()
    assert before & denormals.FTZ_DAZ == 0  # Python's default: IEEE
    with denormals.flushed():
        assert control() == before | denormals.FTZ_DAZ
    assert control() == before
    with pytest.raises(KeyError), denormals.flushed():
        raise KeyError("inside")
    assert control() == before
