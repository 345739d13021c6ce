"""The row-major to column-major mapping of the cuBLAS GEMM wrapper, checked on the CPU: a stand-in
for nvmath's cublas module runs the column-major GEMM it is asked for on NumPy memory, exactly as
cuBLAS would read it (pointers, leading dimensions, transpose flags)."""

from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest
from support.cuda import DeviceLike, column_major

from gpunn.backends.cuda.cublas import Gemm


def fake_cublas(calls: list) -> types.SimpleNamespace:
    def gemm_for(dtype):
        def gemm(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            calls.append((transa, transb, m, n, k, lda, ldb, ldc))
            A = column_major(a, *((m, k) if transa == 0 else (k, m)), lda, dtype)
            B = column_major(b, *((k, n) if transb == 0 else (n, k)), ldb, dtype)
            C = column_major(c, m, n, ldc, dtype)
            opA = A if transa == 0 else A.T
            opB = B if transb == 0 else B.T
            al = np.frombuffer((ctypes.c_char * 8).from_address(alpha), dtype=dtype, count=1)[0]
            C[...] = al * (opA @ opB)  # beta is 0 here
        return gemm

    return types.SimpleNamespace(
        sgemm=gemm_for(np.float32), dgemm=gemm_for(np.float64),
        Operation=types.SimpleNamespace(N=0, T=1),
        Math=types.SimpleNamespace(DEFAULT_MATH=0, TF32_TENSOR_OP_MATH=3),
        create=lambda: 1, set_stream=lambda h, s: None, set_workspace=lambda h, p, n: None,
        set_math_mode=lambda h, mode: calls.append(("math", mode)))


def strided(values: np.ndarray, extra: int) -> np.ndarray:
    """``values`` as the first columns of an array ``extra`` columns wider."""
    wide = np.full((values.shape[0], values.shape[1] + extra), np.nan, values.dtype)
    wide[:, :values.shape[1]] = values
    return wide[:, :values.shape[1]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
def test_gemm_mapping_matches_numpy(dtype, trans_a, trans_b, rng):
    calls: list = []
    cupy = types.SimpleNamespace(
        cuda=types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=7)),
        empty=lambda n, dtype: DeviceLike(np.empty(n, np.uint8)), uint8=np.uint8)
    g = Gemm.__new__(Gemm)
    Gemm.__init__(g, cupy)  # nvmath may be absent here: install the stand-in either way
    g.cublas = fake_cublas(calls)
    m, k, n = 5, 7, 3  # out is (m, n); odd sizes so a swapped dimension cannot pass
    # Inputs and output are column slices of wider arrays: each leading dimension (the row
    # stride) differs from the width, so taking one for the other cannot pass.
    a = strided(rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype), 3)
    b = strided(rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype), 2)
    wide = np.full((m, n + 4), np.nan, dtype)
    out = wide[:, :n]
    g.gemm(DeviceLike(a), DeviceLike(b), DeviceLike(out), trans_a, trans_b)
    expect = (a.T if trans_a else a) @ (b.T if trans_b else b)
    np.testing.assert_allclose(out, expect, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert np.isnan(wide[:, n:]).all()  # nothing written past the slice
    g.set_tf32(True)
    assert ("math", 3) in calls
