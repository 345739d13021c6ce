"""The cuBLASLt epilogue wrapper (gpunn/backends/cuda/cublaslt.py), checked on the CPU: a stand-in
for nvmath's cublasLt module (tests/support/cublaslt.py) runs the column-major matmul and epilogue
it is asked for on NumPy memory, reading descriptors, layouts and pointers as cuBLASLt would. What
this shows: operands, leading dimensions, transposes, bias and mask pointers and data types are
wired so that the row-major results are right; that "no algorithm" leaves everything untouched.
What it cannot show: cuBLASLt's own behaviour (the gpu-marked tests of
tests/training/test_gpu_training.py and tests/test_bf16.py check that on a GPU)."""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest
from support.cublaslt import CAP, CONFIG, DESC, EPILOGUE, PREF, REDUCTION, Dev, FakeLt, aligned, epilogues

from gpunn.backends.bf16 import BF16_BITS, round_to_bf16, widen
from gpunn.backends.cuda import cublaslt
from gpunn.backends.cuda.cublaslt import CANDIDATES, relu_mask_shape, split_counts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu, keep_mask", [(False, False), (True, False), (True, True)])
def test_forward_epilogues_compute_dense_layers(dtype, relu, keep_mask, rng):
    rows, n_in, n_out = 7, 5, 13  # odd sizes; 13 outputs need 2 mask bytes, padded to 16
    lt = FakeLt()
    e = epilogues(lt)
    x = aligned(rng.standard_normal((rows, n_in)).astype(dtype))
    w = aligned(rng.standard_normal((n_in, n_out)).astype(dtype))
    b = aligned(rng.standard_normal((1, n_out)).astype(dtype))
    out = aligned(np.full((rows, n_out), np.nan, dtype))
    mask = aligned(np.zeros(relu_mask_shape(rows, n_out), np.uint8)) if keep_mask else None
    assert e.forward(Dev(x), Dev(w), Dev(b), Dev(out), relu, None if mask is None else Dev(mask))
    z = x @ w + b
    np.testing.assert_allclose(out, np.maximum(z, 0) if relu else z,
                               rtol=1e-5 if dtype == np.float32 else 1e-12)
    expect = {(False, False): 4, (True, False): 6, (True, True): 134}[(relu, keep_mask)]
    assert lt.calls == [(expect, 0, 0)]
    if keep_mask:
        assert relu_mask_shape(rows, n_out) == (rows, 16)
        bits = np.unpackbits(mask, axis=1, bitorder="little")[:, :n_out]
        np.testing.assert_array_equal(bits.astype(bool), z > 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_drelu_bgrad_gives_the_lower_layers_gradients(dtype, rng):
    rows, n_in, n_mid, n_out = 9, 3, 21, 6
    e = epilogues(FakeLt())
    x = aligned(rng.standard_normal((rows, n_in)).astype(dtype))
    w1 = aligned(rng.standard_normal((n_in, n_mid)).astype(dtype))
    b1 = aligned(rng.standard_normal((1, n_mid)).astype(dtype))
    w2 = aligned(rng.standard_normal((n_mid, n_out)).astype(dtype))
    h = aligned(np.empty((rows, n_mid), dtype))
    mask = aligned(np.zeros(relu_mask_shape(rows, n_mid), np.uint8))
    assert e.forward(Dev(x), Dev(w1), Dev(b1), Dev(h), True, Dev(mask))
    dvalues = aligned(rng.standard_normal((rows, n_out)).astype(dtype))
    out = aligned(np.full((rows, n_mid), np.nan, dtype))
    db1 = aligned(np.full((1, n_mid), np.nan, dtype))
    assert e.dinputs_relu_bgrad(Dev(dvalues), Dev(w2), Dev(out), Dev(mask), Dev(db1))
    expect = (dvalues @ w2.T) * (h > 0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expect, rtol=tol, atol=tol)
    np.testing.assert_allclose(db1, expect.sum(axis=0, keepdims=True), rtol=tol, atol=tol)


@pytest.mark.parametrize("relu, keep_mask", [(False, False), (True, False), (True, True)])
def test_bf16_forward_epilogues_write_a_bf16_output_from_a_float32_bias(relu, keep_mask, rng):
    """Precision "bf16" below another Dense layer: bfloat16 operands, the float32 bias added to
    the float32 sums (BIAS_DATA_TYPE), the output written in bfloat16, rounded once; alpha and
    beta in float32. The bias read as bfloat16 (D's type, cuBLASLt's default) would be garbage."""
    rows, n_in, n_out = 7, 5, 13
    lt = FakeLt()
    e = epilogues(lt)
    x, w = bf16(rng.standard_normal((rows, n_in)), 0), bf16(rng.standard_normal((n_in, n_out)), 0)
    b = aligned(rng.standard_normal((1, n_out)).astype(np.float32))
    out = aligned(np.full((rows, n_out), 0xFFFF, BF16_BITS))
    mask = aligned(np.zeros(relu_mask_shape(rows, n_out), np.uint8)) if keep_mask else None
    assert e.forward(Dev(x), Dev(w), Dev(b), Dev(out), relu, None if mask is None else Dev(mask))
    z = widen(np, x) @ widen(np, w) + b
    want = np.maximum(z, 0) if relu else z
    np.testing.assert_array_equal(out, round_to_bf16(np, want, np.empty(want.shape, BF16_BITS)))
    (problem,) = e.problems.values()
    assert lt.objects[problem.desc][DESC.BIAS_DATA_TYPE] == 0  # CUDA_R_32F
    assert lt.objects[problem.desc]["scale"] == 0
    if keep_mask:
        bits = np.unpackbits(mask, axis=1, bitorder="little")[:, :n_out]
        np.testing.assert_array_equal(bits.astype(bool), z > 0)


def test_bf16_drelu_bgrad_writes_a_bf16_gradient_and_a_float32_bias_gradient(rng):
    rows, n_in, n_mid, n_out = 9, 3, 21, 6
    e = epilogues(FakeLt())
    x, w1 = bf16(rng.standard_normal((rows, n_in)), 0), bf16(rng.standard_normal((n_in, n_mid)), 0)
    b1 = aligned(rng.standard_normal((1, n_mid)).astype(np.float32))
    h = aligned(np.empty((rows, n_mid), BF16_BITS))
    mask = aligned(np.zeros(relu_mask_shape(rows, n_mid), np.uint8))
    assert e.forward(Dev(x), Dev(w1), Dev(b1), Dev(h), True, Dev(mask))
    dvalues = bf16(rng.standard_normal((rows, n_out)), 0)
    w2 = bf16(rng.standard_normal((n_mid, n_out)), 0)
    out = aligned(np.full((rows, n_mid), 0xFFFF, BF16_BITS))
    db1 = aligned(np.full((1, n_mid), np.nan, np.float32))
    assert e.dinputs_relu_bgrad(Dev(dvalues), Dev(w2), Dev(out), Dev(mask), Dev(db1))
    expect = (widen(np, dvalues) @ widen(np, w2).T) * (widen(np, h) > 0)
    np.testing.assert_array_equal(out, round_to_bf16(np, expect, np.empty(expect.shape, BF16_BITS)))
    np.testing.assert_allclose(db1, expect.sum(axis=0, keepdims=True), rtol=1e-5, atol=1e-6)


def test_a_bf16_output_needs_bf16_operands_and_a_float32_bias(rng):
    """What the wrapper declines, writing nothing: a bfloat16 D with no bias (a plain GEMM gives
    float32), or from float32 operands; a bfloat16 bias; a float64 D from bfloat16 operands."""
    e = epilogues(FakeLt())
    x, w = bf16(rng.standard_normal((4, 3)), 0), bf16(rng.standard_normal((3, 5)), 0)
    out = aligned(np.full((4, 5), 0xFFFF, BF16_BITS))
    b32 = aligned(np.zeros((1, 5), np.float32))
    x32, w32 = aligned(np.ones((4, 3), np.float32)), aligned(np.ones((3, 5), np.float32))
    assert not e.matmul(Dev(x), Dev(w), Dev(out))
    assert not e.forward(Dev(x32), Dev(w32), Dev(b32), Dev(out), True)
    assert not e.forward(Dev(x), Dev(w), Dev(bf16(np.zeros((1, 5)), 0)), Dev(out), True)
    assert not e.forward(Dev(x), Dev(w), Dev(aligned(np.zeros((1, 5)))),
                         Dev(aligned(np.full((4, 5), np.nan))), True)
    assert (out == 0xFFFF).all() and e.problems == {}
    logits = aligned(np.full((4, 5), np.nan, np.float32))  # the output layer: a float32 D
    assert e.forward(Dev(x), Dev(w), Dev(b32), Dev(logits), False)
    np.testing.assert_allclose(logits, widen(np, x) @ widen(np, w), rtol=1e-6)


def test_no_algorithm_means_nothing_written(rng):
    lt = FakeLt(unsupported={EPILOGUE.RELU_BIAS})
    e = epilogues(lt)
    x, w = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    b, out = aligned(np.zeros((1, 5))), aligned(np.full((4, 5), np.nan))
    for _ in range(2):  # the answer is remembered, and still refused
        assert not e.forward(Dev(x), Dev(w), Dev(b), Dev(out), True)
    assert np.isnan(out).all() and lt.calls == []
    assert e.forward(Dev(x), Dev(w), Dev(b), Dev(out), False)  # BIAS is offered


def test_unsuitable_operands_take_the_separate_path(rng):
    e = epilogues(FakeLt())
    x, w = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    out = aligned(np.full((4, 5), np.nan))
    b = aligned(np.zeros((1, 5)))
    mixed = aligned(rng.standard_normal((4, 3)).astype(np.float32))
    assert not e.forward(Dev(mixed), Dev(w), Dev(b), Dev(out), True)  # dtypes differ
    strided_bias = aligned(np.zeros((1, 10)))[:, ::2]
    assert not e.forward(Dev(x), Dev(w), Dev(strided_bias), Dev(out), True)
    wrong_mask = aligned(np.zeros((4, 8), np.uint8))  # not relu_mask_shape(4, 5)
    assert not e.forward(Dev(x), Dev(w), Dev(b), Dev(out), True, Dev(wrong_mask))
    assert np.isnan(out).all()


def test_problems_are_planned_once_per_shape(rng):
    lt = FakeLt()
    e = epilogues(lt)
    for rows, _ in itertools.product((4, 6), range(3)):
        x = aligned(rng.standard_normal((rows, 3)))
        w, b = aligned(rng.standard_normal((3, 5))), aligned(rng.standard_normal((1, 5)))
        assert e.forward(Dev(x), Dev(w), Dev(b), Dev(aligned(np.empty((rows, 5)))), False)
    assert len(e.problems) == 2 and len(lt.calls) == 6


def aligned_at(arr: np.ndarray, alignment: int) -> np.ndarray:
    """A copy of ``arr`` whose address is a multiple of ``alignment`` and of no larger power of
    two (as a bias view into the flat parameter buffer may be)."""
    raw = np.empty(arr.nbytes + 4 * alignment, np.uint8)
    start = -raw.ctypes.data % (2 * alignment) + alignment
    out = raw[start:start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


def test_plans_see_the_real_alignment_of_bias_and_mask(rng):
    """The heuristic is asked with pointers as aligned as the ones the call will use, and a
    bias of another alignment gets its own plan; the workspace it may plan leaves 256 bytes."""
    from gpunn.backends.cuda.cublaslt import WORKSPACE_BYTES, _alignment

    lt = FakeLt()
    e = epilogues(lt)
    x, w = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    for alignment in (16, 256, 16):
        b = aligned_at(rng.standard_normal((1, 5)), alignment)
        out = aligned(np.empty((4, 5)))
        mask = aligned_at(np.zeros(relu_mask_shape(4, 5), np.uint8), alignment)
        assert e.forward(Dev(x), Dev(w), Dev(b), Dev(out), True, Dev(mask))
        np.testing.assert_allclose(out, np.maximum(x @ w + b, 0))
    assert [(_alignment(p["bias"]), _alignment(p["aux"])) for p in lt.planned] == [(16, 16), (256, 256)]
    assert all(p["workspace"] == WORKSPACE_BYTES - 256 for p in lt.planned)


def test_drelu_bgrad_declines_a_single_output_above(rng):
    lt = FakeLt()
    e = epilogues(lt)
    w = aligned(rng.standard_normal((21, 1)))  # Dense(21, 1): K = 1
    out, db = aligned(np.full((9, 21), np.nan)), aligned(np.full((1, 21), np.nan))
    mask = aligned(np.zeros(relu_mask_shape(9, 21), np.uint8))
    assert not e.dinputs_relu_bgrad(Dev(aligned(np.ones((9, 1)))), Dev(w), Dev(out), Dev(mask), Dev(db))
    assert np.isnan(out).all() and lt.planned == [] and lt.calls == []


def test_plans_beyond_the_limit_are_destroyed_oldest_first(rng, monkeypatch):
    from gpunn.backends.cuda import cublaslt

    monkeypatch.setattr(cublaslt, "MAX_PROBLEMS", 2)
    lt = FakeLt()
    e = epilogues(lt)
    w, b = aligned(rng.standard_normal((3, 5))), aligned(rng.standard_normal((1, 5)))
    for rows in (4, 5, 4, 6):  # 4 is used again before 6 comes: 5 is the oldest then
        x, out = aligned(rng.standard_normal((rows, 3))), aligned(np.empty((rows, 5)))
        assert e.forward(Dev(x), Dev(w), Dev(b), Dev(out), False)
        np.testing.assert_allclose(out, x @ w + b)
    assert [key[2] for key in e.problems] == [4, 6]  # n = rows
    assert len(lt.destroyed) == 4  # the rows-5 plan: three layouts and its descriptor


def strided(values: np.ndarray, extra: int) -> np.ndarray:
    """``values`` as the first columns of a 256-byte aligned array ``extra`` columns wider: a row
    stride that differs from the width, so a leading dimension taken for a width cannot pass."""
    wide = aligned(np.zeros((values.shape[0], values.shape[1] + extra), values.dtype))
    wide[:, :values.shape[1]] = values
    return wide[:, :values.shape[1]]


def bf16(values: np.ndarray, extra: int) -> np.ndarray:
    bits = np.empty(values.shape, BF16_BITS)
    return strided(round_to_bf16(np, values.astype(np.float32), bits), extra)


@pytest.mark.parametrize("operands", ["float32", "float64", "bf16"])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
@pytest.mark.parametrize("tune", [False, True])
def test_plain_matmul_maps_row_major_products(operands, trans_a, trans_b, tune, rng):
    """``matmul``: out = op(a) @ op(b) with epilogue DEFAULT, every transpose, strided rows,
    float32, float64 and bfloat16 operands (into float32), tuned or not."""
    lt = FakeLt(algorithms=3)
    e = epilogues(lt)
    e.time = lambda fn: (fn(), 1.0)[1]
    m, k, n = 5, 7, 3  # out is (m, n)
    a_vals = rng.standard_normal((k, m) if trans_a else (m, k))
    b_vals = rng.standard_normal((n, k) if trans_b else (k, n))
    if operands == "bf16":
        a, b, out_dtype = bf16(a_vals, 3), bf16(b_vals, 2), np.float32
        A, B = widen(np, np.ascontiguousarray(a)), widen(np, np.ascontiguousarray(b))
    else:
        a, b = strided(a_vals.astype(operands), 3), strided(b_vals.astype(operands), 2)
        A, B, out_dtype = a, b, operands
    wide = aligned(np.full((m, n + 4), np.nan, out_dtype))
    out = wide[:, :n]
    assert e.matmul(Dev(a), Dev(b), Dev(out), trans_a, trans_b, tune=tune)
    expect = (A.T if trans_a else A) @ (B.T if trans_b else B)
    np.testing.assert_allclose(out, expect, rtol=1e-6 if out_dtype == np.float32 else 1e-12)
    assert np.isnan(wide[:, n:]).all()  # nothing written past the slice
    assert lt.calls[-1] == (EPILOGUE.DEFAULT, int(trans_b), int(trans_a))  # the swap
    assert [p["count"] for p in lt.planned] == [CANDIDATES if tune else 1]


def test_plain_matmul_declines_what_cublaslt_does_not_take(rng):
    e = epilogues(FakeLt())
    x32 = aligned(rng.standard_normal((4, 3)).astype(np.float32))
    x64 = aligned(rng.standard_normal((3, 5)))
    out = aligned(np.full((4, 5), np.nan))
    assert not e.matmul(Dev(x32), Dev(x64), Dev(out))  # operand types differ
    bits = bf16(rng.standard_normal((4, 3)), 0)
    assert not e.matmul(Dev(bits), Dev(bf16(rng.standard_normal((3, 5)), 0)), Dev(out))  # bf16 -> f64
    assert not e.matmul(Dev(aligned(np.ones((4, 6)))[:, ::2]), Dev(x64), Dev(out))  # strided columns
    assert np.isnan(out).all()


def tuned(algorithms=4, failing=(), costs=None, capturing=lambda: False, **split_k):
    """Epilogues over a FakeLt offering ``algorithms`` (``split_k``: its split-K arguments), with
    a timer that runs the call it times and returns the cost of the algorithm that ran
    (``costs``, by number, or (number, parts, scheme) for a split one)."""
    lt = FakeLt(algorithms=algorithms, failing=failing, **split_k)
    e = epilogues(lt, capturing)
    timed: list[int] = []

    def time(fn):
        fn()
        timed.append(lt.algos[-1])
        return costs[lt.algos[-1]]

    e.time = time
    return lt, e, timed


def test_tuning_keeps_the_fastest_algorithm(rng):
    """A tuned problem times each algorithm the heuristics offered once, on its first call, and
    every call after runs the fastest; the output is the product either way."""
    lt, e, timed = tuned(costs={1: 3.0, 2: 1.0, 3: 2.0, 4: 5.0})
    x, w = aligned(rng.standard_normal((6, 3))), aligned(rng.standard_normal((3, 5)))
    b = aligned(rng.standard_normal((1, 5)))
    for _ in range(3):
        out = aligned(np.full((6, 5), np.nan))
        assert e.forward(Dev(x), Dev(w), Dev(b), Dev(out), True, tune=True)
        np.testing.assert_allclose(out, np.maximum(x @ w + b, 0))
    assert timed == [1, 2, 3, 4]  # each once, in the heuristics' order
    assert lt.algos[len(timed):] == [2, 2, 2]
    (problem,) = e.problems.values()
    assert problem.timings == {0: 3.0, 1: 1.0, 2: 2.0, 3: 5.0} and problem.chosen == 1
    assert lt.planned[0]["count"] == CANDIDATES
    untuned = aligned(np.empty((6, 5)))  # the same shape untuned: its own plan, the first choice
    assert e.forward(Dev(x), Dev(w), Dev(b), Dev(untuned), True)
    assert lt.algos[-1] == 1 and len(timed) == 4 and lt.planned[-1]["count"] == 1


def test_a_tuned_plain_gemm_keeps_cublas_where_its_own_choice_is_faster(rng):
    """The caller's other path (cuBLAS, for the backend) is timed once beside the algorithms: where
    it is the fastest, matmul declines the problem from then on, writing nothing, to callers that
    have that path; where it is not, the fastest algorithm runs. Epilogue problems are not given
    one."""
    a, b = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    for cublas_ms, declined in ((0.5, True), (1.5, False)):
        lt, e, timed = tuned(costs={1: 3.0, 2: 1.0, 3: 2.0, 4: 5.0})
        fallbacks = []

        def fallback(fallbacks=fallbacks):
            fallbacks.append("ran")

        e.time = lambda fn, t=e.time, f=fallback, ms=cublas_ms: ms if fn is f else t(fn)

        for call in range(3):
            out = aligned(np.full((4, 5), np.nan))
            assert e.matmul(Dev(a), Dev(b), Dev(out), tune=True, fallback=fallback) is not declined
            if declined and call:
                assert np.isnan(out).all()  # the caller computes it
            else:  # (the first call's timing runs wrote it, as the final call would have)
                np.testing.assert_allclose(out, a @ b)
        (problem,) = e.problems.values()
        assert timed == [1, 2, 3, 4] and problem.chosen == 1 and problem.fallback_ms == cublas_ms
        assert problem.declined is declined
        assert lt.algos[4:] == ([] if declined else [2, 2, 2])
        assert fallbacks == []  # timed (by the stand-in timer), never run by matmul itself
        # a caller with no other path (the same problem): the fastest algorithm, declined or not
        # (on an H200 the backend's decline left a later caller with nothing)
        out = aligned(np.full((4, 5), np.nan))
        assert e.matmul(Dev(a), Dev(b), Dev(out), tune=True)
        np.testing.assert_allclose(out, a @ b)
        assert lt.algos[-1] == 2 and timed == [1, 2, 3, 4]


def test_tuning_passes_over_algorithms_that_fail(rng):
    lt, e, timed = tuned(failing={2}, costs={1: 3.0, 3: 2.0, 4: 5.0})
    a, b = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    out = aligned(np.empty((4, 5)))
    assert e.matmul(Dev(a), Dev(b), Dev(out), tune=True)
    np.testing.assert_allclose(out, a @ b)
    assert timed == [1, 3, 4] and lt.algos[-1] == 3


def test_tuning_skips_algorithms_the_heuristics_did_not_mark_successful(rng):
    lt = FakeLt(algorithms=3, not_offered={1})
    e = epilogues(lt)
    timed = []
    e.time = lambda fn: (fn(), timed.append(lt.algos[-1]), {2: 2.0, 3: 1.0}[lt.algos[-1]])[2]
    a, b = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    out = aligned(np.empty((4, 5)))
    assert e.matmul(Dev(a), Dev(b), Dev(out), tune=True)
    assert timed == [2, 3] and lt.algos[-1] == 3
    np.testing.assert_allclose(out, a @ b)


def test_tuning_with_every_algorithm_failing_declines(rng):
    lt, e, timed = tuned(algorithms=2, failing={1, 2}, costs={})
    a, b = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    out = aligned(np.full((4, 5), np.nan))
    for _ in range(2):  # remembered: not tried again
        assert not e.matmul(Dev(a), Dev(b), Dev(out), tune=True)
    assert np.isnan(out).all() and timed == [] and lt.algos == []


def test_nothing_is_timed_inside_a_capture(rng):
    """Inside a CUDA-graph capture the first choice runs untimed; the first eager call after
    tunes the problem."""
    capturing = [True]
    lt, e, timed = tuned(costs={1: 3.0, 2: 1.0, 3: 2.0, 4: 5.0}, capturing=lambda: capturing[0])
    a, b = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    out = aligned(np.empty((4, 5)))
    assert e.matmul(Dev(a), Dev(b), Dev(out), tune=True)
    assert timed == [] and lt.algos == [1]
    capturing[0] = False
    assert e.matmul(Dev(a), Dev(b), Dev(out), tune=True)
    assert timed == [1, 2, 3, 4] and lt.algos[-1] == 2
    np.testing.assert_allclose(out, a @ b)


@pytest.mark.parametrize("waves, k, counts", [
    (1.0, 4096, []), (1.5, 4096, []),  # the device is full: nothing to gain
    (0.48, 1024, [2, 4]),  # medium's 1024 x 1024 products: up to two waves
    (0.06, 1024, [2, 4, 8, 16]),  # a 10-column product: parts of at least 64 of k
    (0.06, 8192, [2, 4, 8, 16, 32]),  # at most 32 parts
    (0.0, 1024, [2, 4]),  # the heuristics did not say
    (0.5, 100, [])])  # too short to cut
def test_split_counts_fill_an_idle_device_and_no_more(waves, k, counts):
    assert split_counts(waves, k) == counts


INPLACE, COMPUTE = REDUCTION.INPLACE, REDUCTION.COMPUTE_TYPE


def test_tuning_times_split_k_variants_where_the_device_would_sit_idle(rng):
    """Tuned, each offered algorithm that can split k and leaves SMs idle gets its split-K
    variants (each count split_counts gives, each reduction scheme it has), checked by cuBLASLt
    and timed after the heuristics' own; the fastest runs, and gives the product."""
    costs = {1: 3.0, 2: 2.0, (1, 2, COMPUTE): 1.5, (1, 2, INPLACE): 1.25, (1, 4, COMPUTE): 0.5,
             (1, 4, INPLACE): 1.0}
    lt, e, timed = tuned(algorithms=2, costs=costs, splittable={1}, waves={1: 0.25, 2: 0.25})
    a, b = aligned(rng.standard_normal((6, 256))), aligned(rng.standard_normal((256, 5)))
    for _ in range(2):
        out = aligned(np.full((6, 5), np.nan))
        assert e.matmul(Dev(a), Dev(b), Dev(out), tune=True)
        np.testing.assert_allclose(out, a @ b)
    assert timed == [1, 2, (1, 2, COMPUTE), (1, 2, INPLACE), (1, 4, COMPUTE), (1, 4, INPLACE)]
    assert lt.algos[len(timed):] == [(1, 4, COMPUTE)] * 2  # the two calls
    (problem,) = e.problems.values()
    assert problem.offered == 2 and problem.count == 6 and problem.chosen == 4
    assert problem.splits == [(1, 0), (1, 0), (2, COMPUTE), (2, INPLACE), (4, COMPUTE),
                              (4, INPLACE)]
    # each variant's workspace and waves are the check's: the parts' float32 sums, 4 x 0.25 waves
    assert problem.results["workspace_size"][2:].tolist() == [4 * 30 * 2, 0, 4 * 30 * 4, 0]
    assert problem.results["waves_count"][2:].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert problem.results["algo"][:, 0].tolist() == [1, 2, 1, 1, 1, 1]  # the others untouched


def test_split_k_variants_are_only_those_cublaslt_accepts_and_has_room_for(rng, monkeypatch):
    """No variants untuned, for a full device, for an algorithm that cannot split, or for one
    cuBLASLt's check refuses (an epilogue); a bfloat16 D adds its parts in float32 alone
    (compute type, never in place), and a variant needing more workspace than there is is
    left out."""
    x, w = aligned(rng.standard_normal((6, 128))), aligned(rng.standard_normal((128, 5)))
    b = aligned(rng.standard_normal((1, 5)))
    lt, e, _ = tuned(algorithms=2, costs={1: 1.0, 2: 2.0}, splittable={1}, waves={1: 1.0})
    assert e.matmul(Dev(x), Dev(w), Dev(aligned(np.empty((6, 5)))), tune=True)
    lt2, e2, _ = tuned(algorithms=1, costs={1: 1.0}, splittable={1},
                       unsplittable={EPILOGUE.RELU_BIAS})
    assert e2.forward(Dev(x), Dev(w), Dev(b), Dev(aligned(np.empty((6, 5)))), True, tune=True)
    lt3, e3, _ = tuned(algorithms=1, costs={1: 1.0}, splittable={1})
    assert e3.matmul(Dev(x), Dev(w), Dev(aligned(np.empty((6, 5)))))  # untuned
    assert lt.checked == [] and lt3.checked == []
    assert lt2.checked == [(1, 2, COMPUTE), (1, 2, INPLACE)]  # each refused
    for e_ in (e, e2, e3):
        (problem,) = e_.problems.values()
        assert problem.count == problem.offered and set(problem.splits) == {(1, 0)}

    # bf16: float32 room for 2 parts of a (6, 5) D fits the workspace, for 4 it does not
    monkeypatch.setattr(cublaslt, "WORKSPACE_BYTES", 4 * 30 * 2 + cublaslt.WORKSPACE_SLACK)
    lt, e, timed = tuned(algorithms=1, costs={1: 1.0, (1, 2, COMPUTE): 0.5}, splittable={1})
    x16 = bf16(rng.standard_normal((6, 256)), 0)  # k = 256: 2 or 4 parts
    w16 = bf16(rng.standard_normal((256, 5)), 0)
    b32 = aligned(rng.standard_normal((1, 5)).astype(np.float32))
    out = aligned(np.zeros((6, 5), BF16_BITS))
    assert e.forward(Dev(x16), Dev(w16), Dev(b32), Dev(out), True, tune=True)
    assert lt.checked == [(1, 2, COMPUTE), (1, 4, COMPUTE)] and timed == [1, (1, 2, COMPUTE)]
    want = np.maximum(widen(np, x16) @ widen(np, w16) + b32, 0).astype(np.float32)
    np.testing.assert_array_equal(widen(np, out), widen(np, round_to_bf16(
        np, want, np.empty(want.shape, BF16_BITS))))


def test_stand_in_matches_the_real_bindings():
    """Names, values and call signatures of the stand-in are those of nvmath's cublasLt, so the
    wrapper tested against it calls the real module the same way (where nvmath is installed)."""
    import inspect
    import re

    lt = pytest.importorskip("nvmath.bindings.cublasLt")
    for group, real in ((EPILOGUE, lt.Epilogue), (DESC, lt.MatmulDescAttribute),
                        (PREF, lt.MatmulPreferenceAttribute), (CONFIG, lt.MatmulAlgoConfigAttribute),
                        (CAP, lt.MatmulAlgoCapAttribute), (REDUCTION, lt.ReductionScheme)):
        for name, value in vars(group).items():
            assert int(getattr(real, name)) == value, name
    real = lt.matmul_heuristic_result_dtype  # the wrapper passes its address as the algorithm's
    assert real.itemsize == FakeLt.matmul_heuristic_result_dtype.itemsize
    assert real.fields["algo"][1] == 0
    assert real.fields["state"] == FakeLt.matmul_heuristic_result_dtype.fields["state"]  # tuning reads it
    for name in ("matmul_desc_create", "matmul_desc_set_attribute", "matrix_layout_create",
                 "matmul_preference_create", "matmul_preference_set_attribute",
                 "matmul_preference_destroy", "matmul_algo_get_heuristic", "matmul", "create",
                 "matrix_layout_destroy", "matmul_desc_destroy", "matmul_algo_check",
                 "matmul_algo_config_get_attribute", "matmul_algo_config_set_attribute",
                 "matmul_algo_cap_get_attribute"):
        doc_args = re.match(rf"{name}\((.*?)\)", getattr(lt, name).__doc__).group(1)
        real_count = len([a for a in doc_args.split(",") if a.strip()])
        fake_count = len(inspect.signature(getattr(FakeLt(), name)).parameters)
        assert fake_count == real_count, name
    for attr in (DESC.TRANSA, DESC.TRANSB, DESC.EPILOGUE, DESC.BIAS_POINTER, DESC.EPILOGUE_AUX_LD,
                 DESC.BIAS_DATA_TYPE):
        assert FakeLt.get_matmul_desc_attribute_dtype(attr) is lt.get_matmul_desc_attribute_dtype(attr)
    for attr in vars(CONFIG).values():
        assert FakeLt.get_matmul_algo_config_attribute_dtype(attr) is \
            lt.get_matmul_algo_config_attribute_dtype(attr)
    for attr in vars(CAP).values():
        assert FakeLt.get_matmul_algo_cap_attribute_dtype(attr) is \
            lt.get_matmul_algo_cap_attribute_dtype(attr)
    for field in ("workspace_size", "waves_count"):  # the split-K variants read them
        assert real.fields[field] == FakeLt.matmul_heuristic_result_dtype.fields[field]


def test_matmuls_on_a_stream_of_their_own_take_its_workspace(rng):
    """A stream added with ``add_stream`` (the CuPy backend's side stream, whose matmuls may run
    while another stream's do) gets a workspace of its own; every other stream shares the first,
    their work being in one order. Each call names the stream it is queued on."""
    lt = FakeLt()
    e = epilogues(lt)
    seen, matmul = [], lt.matmul
    lt.matmul = lambda *args: (seen.append((args[13], args[15])), matmul(*args))[1]
    x, w = aligned(rng.standard_normal((4, 3))), aligned(rng.standard_normal((3, 5)))
    b, out = aligned(rng.standard_normal((1, 5))), aligned(np.empty((4, 5)))
    current = e.cupy.cuda.get_current_stream()
    e.add_stream(types.SimpleNamespace(ptr=9))
    e.add_stream(types.SimpleNamespace(ptr=9))  # once
    for ptr in (7, 9, 7, 8):
        current.ptr = ptr
        assert e.forward(Dev(x), Dev(w), Dev(b), Dev(out), True)
        np.testing.assert_allclose(out, np.maximum(x @ w + b, 0))
    (shared, _), (own, _) = seen[:2]
    assert shared != own
    assert seen == [(shared, 7), (own, 9), (shared, 7), (shared, 8)]
