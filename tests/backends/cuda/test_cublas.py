"""The row-major to column-major mapping of the cuBLAS GEMM wrapper, checked on the CPU: a stand-in
for nvmath's cublas module runs the column-major GEMM it is asked for on NumPy memory, exactly as
cuBLAS would read it (pointers, leading dimensions, transpose flags)."""

from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest
from support.cuda import DeviceLike, column_major

from gpunn.backends.bf16 import round_to_bf16, widen
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

    def gemm_ex(handle, transa, transb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c,
                ctype, ldc, compute, algo):
        """cublasGemmEx for bfloat16 A and B (type 14), float32 C (type 0), float32 sums (68)."""
        calls.append(("ex", transa, transb, m, n, k, lda, ldb, ldc, atype, btype, ctype, compute))
        assert (atype, btype, ctype, compute) == (14, 14, 0, 68)
        A = widen(np, column_major(a, *((m, k) if transa == 0 else (k, m)), lda, np.uint16))
        B = widen(np, column_major(b, *((k, n) if transb == 0 else (n, k)), ldb, np.uint16))
        C = column_major(c, m, n, ldc, np.float32)
        al = np.frombuffer((ctypes.c_char * 4).from_address(alpha), dtype=np.float32, count=1)[0]
        C[...] = al * ((A if transa == 0 else A.T) @ (B if transb == 0 else B.T))

    return types.SimpleNamespace(
        sgemm=gemm_for(np.float32), dgemm=gemm_for(np.float64), gemm_ex=gemm_ex,
        Operation=types.SimpleNamespace(N=0, T=1),
        Math=types.SimpleNamespace(DEFAULT_MATH=0, TF32_TENSOR_OP_MATH=3),
        create=lambda: 1, set_stream=lambda h, s: None, set_workspace=lambda h, p, n: None,
        set_math_mode=lambda h, mode: calls.append(("math", mode)))


def strided(values: np.ndarray, extra: int) -> np.ndarray:
    """``values`` as the first columns of an array ``extra`` columns wider."""
    wide = np.full((values.shape[0], values.shape[1] + extra), np.nan, values.dtype)
    wide[:, :values.shape[1]] = values
    return wide[:, :values.shape[1]]


def stand_in_gemm(calls: list) -> Gemm:
    """A Gemm whose cuBLAS is fake_cublas (nvmath may be absent here: installed either way)."""
    cupy = types.SimpleNamespace(
        cuda=types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=7)),
        empty=lambda n, dtype: DeviceLike(np.empty(n, np.uint8)), uint8=np.uint8)
    g = Gemm(cupy)
    g.cublas, g.why_not = fake_cublas(calls), None
    return g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
def test_gemm_mapping_matches_numpy(dtype, trans_a, trans_b, rng):
    calls: list = []
    g = stand_in_gemm(calls)
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


def bf16_bits(values: np.ndarray, extra: int) -> np.ndarray:
    """``values`` rounded to bfloat16 bits, as the first columns of an array ``extra`` wider."""
    wide = np.full((values.shape[0], values.shape[1] + extra), 0x7FC0, np.uint16)  # NaN bits
    round_to_bf16(np, values, out=wide[:, :values.shape[1]])
    return wide[:, :values.shape[1]]


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
def test_bf16_gemm_mapping_matches_numpy(trans_a, trans_b, rng):
    """Two bfloat16 operands (uint16 bits) and a float32 output through cublasGemmEx: the same
    row-major to column-major swap, leading dimensions counted in 2-byte elements for A and B and
    4-byte ones for C."""
    calls: list = []
    g = stand_in_gemm(calls)
    m, k, n = 5, 7, 3
    a = bf16_bits(rng.standard_normal((k, m) if trans_a else (m, k)), 3)
    b = bf16_bits(rng.standard_normal((n, k) if trans_b else (k, n)), 2)
    wide = np.full((m, n + 4), np.nan, np.float32)
    out = wide[:, :n]
    g.gemm(DeviceLike(a), DeviceLike(b), DeviceLike(out), trans_a, trans_b)
    A, B = widen(np, a), widen(np, b)
    expect = (A.T if trans_a else A) @ (B.T if trans_b else B)
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    assert np.isnan(wide[:, n:]).all()
    assert calls[-1][0] == "ex" and calls[-1][6:9] == (b.strides[0] // 2, a.strides[0] // 2, n + 4)


def test_bf16_gemm_refuses_mixed_operands(rng):
    g = stand_in_gemm([])
    a = bf16_bits(rng.standard_normal((4, 3)), 0)
    b = rng.standard_normal((3, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="two bf16 operands and a float32 output"):
        g.gemm(DeviceLike(a), DeviceLike(b), DeviceLike(np.empty((4, 2), np.float32)), False, False)


def test_gemms_on_a_stream_of_their_own_take_its_handle_and_workspace(rng):
    """A stream added with ``add_stream`` (the CuPy backend's side stream) has a handle of its
    own, bound to it and to a workspace of its own once, when added (never inside a capture);
    GEMMs on any other stream take the shared handle, pointed at their stream as before. tf32
    reaches every handle."""
    calls: list = []
    g = stand_in_gemm(calls)
    made, bound, used = iter(range(1, 10)), [], []
    g.cublas.create = lambda: next(made)
    g.cublas.set_stream = lambda h, s: bound.append(("stream", h, s))
    g.cublas.set_workspace = lambda h, p, n: bound.append(("workspace", h, p))
    g.cublas.set_math_mode = lambda h, mode: bound.append(("math", h, mode))
    sgemm = g.cublas.sgemm
    g.cublas.sgemm = lambda handle, *args: (used.append(handle), sgemm(handle, *args))[1]
    current = types.SimpleNamespace(ptr=7)
    g.cupy.cuda.get_current_stream = lambda: current
    g.add_stream(types.SimpleNamespace(ptr=9))
    g.add_stream(types.SimpleNamespace(ptr=9))  # once
    own_workspace = bound[2][2]
    assert bound == [("math", 1, 0), ("stream", 1, 9), ("workspace", 1, own_workspace)]
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    out = np.empty((4, 2), np.float32)
    for ptr in (7, 9, 9, 7, 8):
        current.ptr = ptr
        g.gemm(DeviceLike(a), DeviceLike(b), DeviceLike(out), False, False)
        np.testing.assert_allclose(out, a @ b, rtol=1e-6)
    assert used == [2, 1, 1, 2, 2]
    shared_workspace = bound[5][2]
    assert shared_workspace != own_workspace
    assert bound[3:] == [("math", 2, 0), ("stream", 2, 7), ("workspace", 2, shared_workspace),
                         ("stream", 2, 8), ("workspace", 2, shared_workspace)]
    del bound[:]
    g.set_tf32(True)
    assert sorted(bound) == [("math", 1, 3), ("math", 2, 3)]
