"""Each fused kernel against the base.py reference run on the same data (random, never zeros), at
odd sizes, with output buffers poisoned first so an unwritten element shows up as NaN.

Twice: on a CUDA device (CuPy; gpu-marked), and on the CPU, where tests/cuda_on_cpu compiles
kernels.cu with g++ and runs each kernel with a fiber per CUDA thread, through the CuPy
backend's own launch code (so argument lists are checked against the kernels' signatures too).
cuBLAS and cuBLASLt are GPU-only."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CUPY_PROBLEM
from support.training import apply_rule

from gpunn.backends import schedule as slots
from gpunn.backends.base import Backend

ON_GPU = [pytest.mark.gpu,
          pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")]


def gpu_backends():
    import cupy

    from gpunn.backends import get_backend

    return get_backend("cupy"), Backend(cupy), cupy


@pytest.fixture(scope="module", params=[pytest.param("gpu", marks=ON_GPU), "cpu-emulation"])
def backends(request):
    """(backend under test, base.py reference, array module)."""
    if request.param == "gpu":
        return gpu_backends()
    return request.getfixturevalue("emulated"), Backend(np), np


SHAPES = [(1, 1), (1, 7), (3, 1), (33, 65), (300, 3), (257, 1000), (1024, 10)]
DTYPES = [np.float32, np.float64]


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}


def poisoned(cp, shape, dtype):
    return cp.full(shape, cp.nan, dtype=dtype)


def rand(cp, rng, shape, dtype):
    return cp.asarray(rng.standard_normal(shape).astype(dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_kernels_match_reference(backends, shape, dtype, rng):
    fast, ref, cp = backends
    n, k = shape
    z, b, d = rand(cp, rng, shape, dtype), rand(cp, rng, (1, k), dtype), rand(cp, rng, shape, dtype)
    for name in ("add_bias", "bias_relu"):
        got, want = z.copy(), z.copy()
        getattr(fast, name)(got, b)
        getattr(ref, name)(want, b)
        cp.testing.assert_allclose(got, want, **tol(dtype))
    output = cp.maximum(z, 0)
    got = fast.relu_backward(d, output, out=poisoned(cp, shape, dtype))
    cp.testing.assert_allclose(got, ref.relu_backward(d, output, out=cp.empty_like(d)), **tol(dtype))
    got = fast.bias_grad(d, out=poisoned(cp, (1, k), dtype))
    cp.testing.assert_allclose(got, ref.bias_grad(d, out=cp.empty((1, k), dtype)),
                               rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)
    rows = cp.asarray(rng.permutation(n))
    got = fast.take_rows(z, rows, out=poisoned(cp, shape, dtype))
    cp.testing.assert_array_equal(got, z[rows])


@pytest.mark.parametrize("shape", SHAPES)
def test_rows_gathered_into_a_bf16_batch_are_rounded_on_the_way(backends, shape, rng):
    """take_rows into a bfloat16 ``out`` (a planned bf16 step's inputs): the rows of a float32
    array, in the shuffle's order, each value rounded as to_bf16 rounds it (a NaN, an infinity
    and a tie included), every element of the poisoned output written; the NumPy backend's and
    base.py's gathers the same."""
    from gpunn.backends import get_backend

    fast, ref, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    n, k = shape
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[:3] = [np.nan, np.inf, 1 + 2**-8][:x.size]
    x = cp.asarray(x)
    rows = cp.asarray(rng.permutation(n))
    want = host(ref.to_bf16(x[rows], out=cp.empty(shape, np.uint16)))
    for backend in (fast, ref):
        got = backend.take_rows(x, rows, out=cp.full(shape, 0xFFFF, np.uint16))
        np.testing.assert_array_equal(host(got), want)
    got = get_backend("numpy").take_rows(host(x), host(rows), out=np.full(shape, 0xFFFF, np.uint16))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(1, 2), (5, 1), (300, 3), (64, 1000), (33, 65), (2, 2048)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_grad", [True, False])
def test_softmax_cross_entropy_kernel(backends, shape, dtype, need_grad, rng):
    fast, ref, cp = backends
    n, k = shape
    logits = rand(cp, rng, shape, dtype) * 3
    labels = cp.asarray(rng.integers(0, k, n))
    got = [poisoned(cp, shape, dtype), poisoned(cp, shape, dtype) if need_grad else None,
           poisoned(cp, (n,), dtype)]
    want = [cp.empty(shape, dtype), cp.empty(shape, dtype) if need_grad else None, cp.empty((n,), dtype)]
    fast.softmax_cross_entropy(logits, labels, *got)
    ref.softmax_cross_entropy(logits, labels, *want)
    for g, w in zip(got, want):
        if w is not None:
            cp.testing.assert_allclose(g, w, **tol(dtype))
    totals = cp.zeros(2, cp.float64)
    fast.softmax_cross_entropy_totals(logits, labels, got[0], got[1], got[2], totals)
    assert float(totals[0]) == pytest.approx(float(want[2].sum()), rel=1e-5)
    assert int(totals[1]) == int(ref.count_correct(logits, labels))


@pytest.mark.parametrize("rule", ["sgd", "sgd-momentum", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_kernels_match_reference(backends, rule, dtype, rng):
    fast, ref, cp = backends
    size = 1000 + 17
    p0, g = rand(cp, rng, (size,), dtype), rand(cp, rng, (size,), dtype)
    s1, s2 = cp.abs(rand(cp, rng, (size,), dtype)), cp.abs(rand(cp, rng, (size,), dtype))
    results = []
    for bk in (fast, ref):
        p, m, c = p0.copy(), s1.copy(), s2.copy()
        scratch = cp.empty_like(p)
        # Step 3 of a run with lr 0.1 (0.01 for RMSprop and Adam) and no decay: what
        # advance_schedule leaves for the rule to read.
        values = slots.start(2, 0.01 if rule in ("rmsprop", "adam") else 0.1, 0.0, 0.9, 0.999)
        slots.advance(values)
        schedule = cp.asarray(values)
        apply_rule(bk, rule, p, g, m, c, schedule, scratch)
        results.append((p, m, c))
    for got, want in zip(*results):
        cp.testing.assert_allclose(got, want, **tol(dtype))


def test_schedule_on_the_device_follows_the_book(backends):
    fast, _, cp = backends
    schedule = cp.asarray(slots.start(0, 0.05, 5e-3, 0.9, 0.999))
    for t in range(4):
        fast.advance_schedule(schedule)
        lr_t, c1, c2 = (float(schedule[i]) for i in (slots.LR_T, slots.CORRECTION_1,
                                                     slots.CORRECTION_2))
        assert lr_t == pytest.approx(0.05 / (1 + 5e-3 * t), rel=1e-15)
        assert c1 == pytest.approx(1 / (1 - 0.9 ** (t + 1)), rel=1e-14)
        assert c2 == pytest.approx(1 / (1 - 0.999 ** (t + 1)), rel=1e-12)
    assert float(schedule[slots.ITERATIONS]) == 4


@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.gpu
@pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")
def test_cublas_gemm_matches_cupy_matmul(trans, dtype, rng):
    fast, _, cp = gpu_backends()
    trans_a, trans_b = trans
    m, k, n = 37, 129, 65
    a = rand(cp, rng, (k, m) if trans_a else (m, k), dtype)
    b = rand(cp, rng, (n, k) if trans_b else (k, n), dtype)
    out = poisoned(cp, (m, n), dtype)
    fast.gemm(a, b, out, trans_a, trans_b)
    want = cp.matmul(a.T if trans_a else a, b.T if trans_b else b)
    cp.testing.assert_allclose(out, want, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)


@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("operands", ["float32", "float64", "bf16"])
@pytest.mark.parametrize("m, k, n", [(37, 129, 65), (1024, 1024, 10)])
@pytest.mark.gpu
@pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")
def test_tuned_cublaslt_gemms_match_cupy_matmul(trans, operands, m, k, n, rng):
    """Plain GEMMs through cuBLASLt with their algorithm timed and chosen (tune_gemms): every
    transpose, float32, and float64 and bfloat16 operands (into float32) where offered."""
    from gpunn.backends.bf16 import BF16_BITS, widen

    fast, _, cp = gpu_backends()
    lt = fast.epilogues
    assert lt.available, lt.why_not
    trans_a, trans_b = trans
    dtype = np.float64 if operands == "float64" else np.float32
    a = rand(cp, rng, (k, m) if trans_a else (m, k), dtype)
    b = rand(cp, rng, (n, k) if trans_b else (k, n), dtype)
    if operands == "bf16":
        a, b = (fast.to_bf16(x, cp.empty(x.shape, BF16_BITS)) for x in (a, b))
        want_a, want_b = widen(cp, a), widen(cp, b)
    else:
        want_a, want_b = a, b
    want = cp.matmul(want_a.T if trans_a else want_a, want_b.T if trans_b else want_b)
    for _ in range(2):  # tuned on the first call; the second runs the choice
        out = poisoned(cp, (m, n), dtype)
        ran = lt.matmul(a, b, out, trans_a, trans_b, tune=True)
        # float32 must be offered; elsewhere the backend takes cuBLAS where cuBLASLt declines
        assert ran or operands != "float32", "cuBLASLt offered no float32 algorithm"
        if not ran:
            return
        cp.testing.assert_allclose(out, want, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-3 if dtype == np.float32 else 1e-12)
    tuned = [p for spec, p in lt.problems.items() if spec.candidates > 1 and spec.m == n]
    assert tuned and all(p.tuned and p.supported and 0 <= p.chosen < p.count for p in tuned)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.gpu
@pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")
def test_every_tuned_candidate_split_k_or_not_computes_the_same_products(precision, rng):
    """Products with few output tiles (16 or 10 columns, 1024 rows and 1024 of k) leave most
    SMs idle, so tuning adds split-K variants of the offered algorithms: each candidate that
    ran, forced in turn, gives the kept one's results (plain, RELU_AUX_BIAS with its mask,
    DRELU_BGRAD with its bias gradient) to rounding (TF32: its rounding of the operands, summed
    over k); and in float32 at least one candidate for the plain product splits k, whether the
    heuristics split it (as on an H200) or tuning added the variant."""
    from gpunn.backends.bf16 import BF16_BITS, widen
    from gpunn.backends.cuda.cublaslt import Epilogues, relu_mask_shape

    fast, _, cp = gpu_backends()
    if precision != "fp32" and fast.why_not(precision):
        pytest.skip(fast.why_not(precision))
    e = Epilogues(cp)  # its own problems: those below are this test's
    assert e.available, e.why_not
    tf32, bf16 = precision == "tf32", precision == "bf16"

    def operand(shape):
        x = rand(cp, rng, shape, np.float32)
        return fast.to_bf16(x, cp.empty(shape, BF16_BITS)) if bf16 else x

    rows, n_in, n_out, n_up = 1024, 1024, 16, 1024
    x, w, w_up = operand((rows, n_in)), operand((n_in, n_out)), operand((n_out, n_up))
    dvalues, h10 = operand((rows, n_up)), operand((n_up, 10))
    b = rand(cp, rng, (1, n_out), np.float32)
    mask = cp.zeros(relu_mask_shape(rows, n_out), cp.uint8)
    out_type = BF16_BITS if bf16 else np.float32

    # Each returns its outputs, or None where cuBLASLt offers no algorithm (whether it takes
    # bf16 epilogues with a float32 bias is test_bf16's question; here only float32 must run).
    def forward():
        out = cp.zeros((rows, n_out), out_type)
        ran = e.forward(x, w, b, out, True, mask, tf32=tf32, tune=True)
        return [out.copy(), mask.copy()] if ran else None

    def backward():
        out, dbiases = cp.zeros((rows, n_out), out_type), poisoned(cp, (1, n_out), np.float32)
        ran = e.dinputs_relu_bgrad(dvalues, w_up, out, mask, dbiases, tf32=tf32, tune=True)
        return [out, dbiases] if ran else None

    def plain():
        out = poisoned(cp, (rows, 10), np.float32)
        return [out] if e.matmul(dvalues, h10, out, tf32=tf32, tune=True) else None

    # TF32 rounds each operand to 10 bits (2^-11 relative): over k = 1024 unit-normal products,
    # two algorithms' sums differ by about 2^-11 * sqrt(1024) ~ 0.016 (an H200's: up to 0.035)
    close = {"rtol": 2.0 ** -7, "atol": 1e-2} if bf16 else \
        {"rtol": 1e-4, "atol": 4 * 2.0 ** -10 * n_up ** 0.5} if tf32 else \
        {"rtol": 1e-4, "atol": 1e-3}
    split = []
    for run in (forward, backward, plain):
        first = run()  # tuned here
        assert first is not None or precision != "fp32", f"cuBLASLt offered no {run.__name__}"
        if first is None:
            split.append(0)
            continue
        problem = list(e.problems.values())[-1]
        split.append(sum(parts > 1 for parts, _ in problem.splits))
        kept = problem.chosen
        for index in sorted(problem.timings):
            problem.chosen = index
            what = f"candidate {index}, split {problem.splits[index]}"
            for got, want in zip(run(), first):
                if got.dtype == cp.uint8:  # a sum within rounding of 0 may change sides
                    bits = cp.unpackbits(got ^ want).sum()
                    assert int(bits) <= 2, f"{what}: {int(bits)} mask bits differ"
                    continue
                if got.dtype == BF16_BITS:
                    got, want = widen(cp, got), widen(cp, want)
                cp.testing.assert_allclose(got, want, **close, err_msg=what)
        problem.chosen = kept
    assert precision != "fp32" or split[2] > 0, "no candidate splits k of the 10-column product"


EPILOGUE_SHAPES = [(1, 2, 64), (300, 2, 64), (33, 65, 1000), (257, 129, 31), (1024, 784, 1024)]


@pytest.mark.parametrize("rows, n_in, n_out", EPILOGUE_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.gpu
@pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")
def test_cublaslt_epilogues_match_reference(rows, n_in, n_out, dtype, rng):
    """Forward with RELU_AUX_BIAS / RELU_BIAS / BIAS, and DRELU_BGRAD with the kept mask, against
    GEMM + the base.py ops. float32 must be offered by cuBLASLt; float64 is checked where it is."""
    from gpunn.backends.cuda.cublaslt import relu_mask_shape

    fast, ref, cp = gpu_backends()
    lt = fast.epilogues
    assert lt.available, lt.why_not
    x, w = rand(cp, rng, (rows, n_in), dtype), rand(cp, rng, (n_in, n_out), dtype)
    b = rand(cp, rng, (1, n_out), dtype)
    gemm_tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else tol(dtype)
    z = ref.gemm(x, w, out=cp.empty((rows, n_out), dtype)) + b
    mask = cp.zeros(relu_mask_shape(rows, n_out), cp.uint8)
    cases = [(False, None, z), (True, None, cp.maximum(z, 0)), (True, mask, cp.maximum(z, 0))]
    for relu, keep, want in cases:
        out = poisoned(cp, (rows, n_out), dtype)
        ran = lt.forward(x, w, b, out, relu, keep)
        assert ran or dtype == np.float64, f"cuBLASLt offered no algorithm (relu={relu})"
        if ran:
            cp.testing.assert_allclose(out, want, **gemm_tol)
    if not ran:
        return
    # The layer above: its dvalues times its weights, through the mask just kept.
    n_up = 17
    w_up, dvalues = rand(cp, rng, (n_out, n_up), dtype), rand(cp, rng, (rows, n_up), dtype)
    h = out
    out, dbiases = poisoned(cp, (rows, n_out), dtype), poisoned(cp, (1, n_out), dtype)
    ran = lt.dinputs_relu_bgrad(dvalues, w_up, out, mask, dbiases)
    assert ran or dtype == np.float64, "cuBLASLt offered no DRELU_BGRAD algorithm"
    if ran:
        want_db = cp.empty((1, n_out), dtype)
        want = ref.dinputs_relu_bgrad(dvalues, w_up, cp.empty_like(out), h, want_db)
        cp.testing.assert_allclose(out, want, **gemm_tol)
        cp.testing.assert_allclose(dbiases, want_db, rtol=1e-3 if dtype == np.float32 else 1e-10,
                                   atol=1e-3)


def test_float_to_bf16_rounds_as_ml_dtypes(backends, rng):
    """The kernel and base.py's reference against ml_dtypes' bfloat16: ties to even, carries into
    the exponent, overflow to infinity, subnormals, signed zeros, and a quiet NaN of the same
    sign for every NaN; then random bit patterns (every float32 there is, in kind)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    fast, ref, cp = backends
    tie = np.float32(1 + 2**-8)  # halfway between two bfloat16s: stays at 1 (even)
    edges = np.array([0.0, -0.0, 1.0, tie, np.float32(1 + 3 * 2**-8), -tie, np.nextafter(tie, 2),
                      3.3895314e38, 3.4028235e38, -3.4028235e38, np.inf, -np.inf, 1e-40, -1e-45,
                      1.1754942e-38, np.nan, -np.nan], np.float32)
    bits = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([edges, bits, rng.standard_normal(20_001).astype(np.float32)])
    with np.errstate(invalid="ignore"):
        want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(x)
    for backend in (fast, ref):
        got = cp.asnumpy(backend.to_bf16(cp.asarray(x), out=cp.full(x.shape, 0xFFFF, np.uint16))) \
            if cp is not np else backend.to_bf16(x, out=np.full(x.shape, 0x1234, np.uint16))
        np.testing.assert_array_equal(got[~nan], want[~nan])
        assert ((got[nan] & 0x7FC0) == 0x7FC0).all()  # quiet NaN
        assert ((got[nan] >> 15) == (x[nan].view(np.uint32) >> 31)).all()  # of the same sign


@pytest.mark.parametrize("relu", [True, False])
def test_bias_and_relu_gradient_passes_write_bf16_copies(backends, relu, rng):
    """bias_act's z16 and relu_backward_column_sum's d16 (precision "bf16"): the float32
    results, the same as without them, rounded as to_bf16 rounds them: NaNs, signed zeros, a tie
    and the largest float32 included, with the poison of the outputs written over everywhere."""
    fast, ref, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    n, k = 67, 65
    specials = [np.nan, -0.0, 0.0, 1 + 2**-8, -1e-40, 3.4e38, -np.nan]
    z = rng.standard_normal((n, k)).astype(np.float32)
    z.flat[:len(specials)] = specials
    b = rng.standard_normal((1, k)).astype(np.float32)
    b[0, :len(specials)] = 0.0
    plain, fused = cp.array(z), cp.array(z)  # copies (np.asarray would not copy)
    z16 = cp.full((n, k), 0xFFFF, np.uint16)
    fast.kernels.bias_act(plain, cp.asarray(b), relu)
    fast.kernels.bias_act(fused, cp.asarray(b), relu, z16)
    np.testing.assert_array_equal(host(fused), host(plain))
    np.testing.assert_array_equal(host(z16), host(ref.to_bf16(plain, out=cp.empty((n, k), np.uint16))))

    d = rng.standard_normal((n, k)).astype(np.float32)
    d.flat[:len(specials)] = specials
    output = np.maximum(rng.standard_normal((n, k)), 0).astype(np.float32)
    output.flat[len(specials):2 * len(specials)] = [np.nan, -0.0, 0.0, 1e-45, -1.0, 2.0, np.inf]
    plain, fused = cp.array(d), cp.array(d)
    d16 = cp.full((n, k), 0xFFFF, np.uint16)
    fast.kernels.relu_backward(plain, cp.asarray(output))
    fast.kernels.relu_backward_column_sum(fused, cp.asarray(output), cp.empty((1, k), np.float32),
                                          d16)
    np.testing.assert_array_equal(host(fused), host(plain))
    np.testing.assert_array_equal(host(d16), host(ref.to_bf16(plain, out=cp.empty((n, k), np.uint16))))


#: Shapes whose column sums take blocks 32, 16 and 8 columns wide (launch.column_sum_block).
WIDE_SHAPES = [(37, 4100), (9, 2050), (300, 1000)]


@pytest.mark.parametrize("shape, width", [((37, 4100), 32), ((9, 2050), 16), ((300, 1000), 8),
                                          ((1, 1), 8), ((5, 4065), 32), ((3, 4064), 16),
                                          ((2, 2033), 16), ((2, 2032), 8)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_sums_in_blocks_of_each_width_match_the_sum(backends, shape, width, dtype, rng):
    """bias_grad (column_sum) spreads its columns over blocks 32, 16 or 8 wide, the widest that
    still makes COLUMN_SUM_BLOCKS blocks: each column's sum is the float64 sum of its rows to
    the dtype's rounding, every column written."""
    from gpunn.backends.cuda import launch

    fast, _, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    n, k = shape
    assert launch.column_sum_block(k) == (width, launch.COLUMN_SUM_THREADS // width)
    d = rand(cp, rng, shape, dtype)
    got = host(fast.bias_grad(d, out=poisoned(cp, (1, k), dtype)))
    want = host(d).astype(np.float64).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES + [(40, 33)] + WIDE_SHAPES)
@pytest.mark.parametrize("dtype, write16", [(np.float32, False), (np.float32, True),
                                            (np.float64, False)])  # bf16 copies: float32 only
def test_relu_backward_column_sum_is_the_two_kernels_in_one_pass(backends, shape, dtype, write16,
                                                                 rng):
    """The ReLU gradient, its bias gradient and any bf16 copy in one pass (a Dense -> ReLU ->
    Dense pair's separate backward): the same bits as relu_backward then column_sum, NaNs and
    signed zeros in both inputs included, with every output poisoned first (the bf16 copy: the
    result rounded as to_bf16 rounds it)."""
    fast, ref, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    n, k = shape
    d = rng.standard_normal(shape).astype(dtype)
    output = np.maximum(rng.standard_normal(shape), 0).astype(dtype)
    specials = [np.nan, -0.0, 0.0, 1e-300 if dtype == np.float64 else 1e-45, -1.0, np.inf, -np.nan]
    d.flat[:len(specials)] = specials[:d.size]
    output.flat[::5] = (specials * d.size)[:len(output.flat[::5])]
    plain, fused = cp.array(d), cp.array(d)
    got16 = cp.full(shape, 0xFFFF, np.uint16) if write16 else None
    want_sums, got_sums = poisoned(cp, (1, k), dtype), poisoned(cp, (1, k), dtype)
    fast.kernels.relu_backward(plain, cp.asarray(output))
    fast.kernels.column_sum(plain, want_sums)
    want16 = ref.to_bf16(plain, out=cp.empty(shape, np.uint16)) if write16 else None
    fast.kernels.relu_backward_column_sum(fused, cp.asarray(output), got_sums, got16)
    for got, want in [(fused, plain), (got_sums, want_sums)] + \
            ([(got16, want16)] if write16 else []):
        np.testing.assert_array_equal(host(got).view(f"u{host(got).itemsize}"),
                                      host(want).view(f"u{host(want).itemsize}"))


@pytest.mark.parametrize("shape, max_blocks", [((1, 4), 1024), ((33, 8), 1024),
                                               ((257, 1000), 1024), ((37, 4100), 1024),
                                               ((2100, 132), 1024), ((301, 12), 2)])
@pytest.mark.parametrize("aligned", [True, False])
def test_bias_act_by_column_quads_gives_the_bits_of_bias_act(backends, shape, max_blocks, aligned,
                                                             rng, monkeypatch):
    """float32 rows of a multiple of 4 columns take bias_act_quads (four columns a thread, no
    remainder per element, vector loads and stores where z and z16 are aligned for them): the
    same bits as the bias_act kernel, with and without the ReLU, the bf16 copy and the float32
    result, NaNs and signed zeros included; z and z16 off their 16- and 8-byte alignment too;
    and with the grid held to 2 blocks, where each thread walks down many rows."""
    from gpunn.backends.cuda import launch

    monkeypatch.setattr(launch, "QUAD_MAX_BLOCKS", max_blocks)
    fast, _, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    n, k = shape
    z = rng.standard_normal(shape).astype(np.float32)
    z.flat[:6] = [np.nan, -0.0, 0.0, -np.nan, 1 + 2**-8, -1e-40][:z.size]
    b = rng.standard_normal((1, k)).astype(np.float32)
    b[0, :2] = 0.0
    skip = 0 if aligned else 1  # one element in: 4 bytes off a float32's, 2 off a bf16's

    def buffer(dtype, fill):
        return cp.full(n * k + skip, fill, dtype)[skip:].reshape(shape)

    for relu in (True, False):
        for write16, only16 in ((False, False), (True, False), (True, True)):
            want, want16 = cp.array(z), cp.full(shape, 0xFFFF, np.uint16)
            launch_args = (want, cp.asarray(b), np.int64(n), np.int32(k), np.int32(relu),
                           want16, np.int32(write16), np.int32(not only16))
            fast.kernels.lookup("bias_act", np.float32)((launch.blocks(z.size),),
                                                        (launch.THREADS,), launch_args)
            got, got16 = buffer(np.float32, 0.0), buffer(np.uint16, 0xFFFF)
            got[...] = cp.asarray(z)
            fast.kernels.bias_act(got, cp.asarray(b), relu, got16 if write16 else None, only16)
            what = f"relu {relu}, bf16 copy {write16}, alone {only16}"
            np.testing.assert_array_equal(host(got).view(np.uint32), host(want).view(np.uint32),
                                          err_msg=what)
            np.testing.assert_array_equal(host(got16), host(want16), err_msg=what)


@pytest.mark.parametrize("shape, max_blocks", [((1, 1), 8192), ((1, 33), 8192), ((33, 1), 8192),
                                               ((70, 45), 8192), ((64, 32), 8192),
                                               ((100, 257), 3)])
def test_transpose_writes_every_value_of_x_transposed(backends, shape, max_blocks, rng,
                                                      monkeypatch):
    """transpose (a tile at a time through shared memory): out is x.T bit for bit, every element
    of the poisoned output written, at sizes short of a tile, across several and past a tile's
    edge; with the grid held to 3 blocks, each walks many tiles."""
    from gpunn.backends.cuda import launch

    monkeypatch.setattr(launch, "MAX_BLOCKS", max_blocks)
    fast, _, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    x = rand(cp, rng, shape, np.float32)
    out = fast.kernels.transpose(x, poisoned(cp, shape[::-1], np.float32))
    np.testing.assert_array_equal(host(out), host(x).T)
    with pytest.raises(ValueError, match="transpose takes C-contiguous float32"):
        fast.kernels.transpose(x, poisoned(cp, shape, np.float64))


@pytest.mark.parametrize("n_in, n_out", [(33, 65), (65, 33), (40, 40)])
@pytest.mark.parametrize("transposed", [True, False])
def test_tf32_weight_gradients_from_a_transposed_copy_are_the_same_products(
        backends, n_in, n_out, transposed, rng, monkeypatch):
    """Under tf32 (tuned), dweights = inputs.T @ dz may run from a transposed copy of the
    narrower operand (inputs, or dz where it has fewer columns), whichever measured faster:
    either way, the products of float64 to float32's rounding on the CPU (tf32's on a GPU), the
    bias gradient the column sums, and the copy written into the layer's scratch buffer only on
    that way. fp32 never copies."""
    import dataclasses

    fast, _, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    if cp is np:  # no tf32 on the CPU: the option set as a GPU would take it (the GEMMs stay NumPy's)
        monkeypatch.setattr(fast, "options", dataclasses.replace(fast.options, precision="tf32"))
        close = {"rtol": 1e-5, "atol": 1e-5}
    else:
        if fast.why_not("tf32"):
            pytest.skip(fast.why_not("tf32"))
        fast = fast.configured(precision="tf32")
        close = {"rtol": 0, "atol": 4 * 2**-10 * np.sqrt(70)}  # operands rounded to 10 bits
    monkeypatch.setattr(fast.transpose_choice, "prefer", transposed)
    asked = []

    def scratch(name, shape, dtype):  # as a layer's buffer: poisoned, and what was asked noted
        asked.append((name, shape, np.dtype(dtype)))
        return poisoned(cp, shape, dtype)

    x, dz = rand(cp, rng, (70, n_in), np.float32), rand(cp, rng, (70, n_out), np.float32)
    dw, db = poisoned(cp, (n_in, n_out), np.float32), poisoned(cp, (1, n_out), np.float32)
    fast.weight_grads(x, dz, dz, dw, db, scratch=scratch)
    np.testing.assert_allclose(host(dw), host(x).astype(np.float64).T @ host(dz), **close)
    np.testing.assert_allclose(host(db), host(dz).sum(axis=0, keepdims=True), rtol=1e-5, atol=1e-5)
    copied = (min(n_in, n_out), 70)  # the shape of the copy: inputs.T on a tie
    assert asked == ([("transposed", copied, np.dtype(np.float32))] if transposed else [])
    asked.clear()
    dw[...] = np.nan
    fast.configured(precision="fp32").weight_grads(x, dz, dz, dw, db, scratch=scratch)
    assert asked == []
    np.testing.assert_allclose(host(dw), host(x).astype(np.float64).T @ host(dz),
                               rtol=1e-5, atol=1e-5)


def test_every_relu_gradient_kernel_passes_nothing_where_the_output_was_subnormal(backends, rng):
    """relu_backward, relu_backward_column_sum and narrow_dinputs_relu_bgrad agree on which
    outputs the ReLU passed, written out by hand: positive normal numbers and +inf; not zeros,
    subnormals (CuPy compiles with -ftz=true, where a comparison calls them 0: on an H200 the
    first two kernels disagreed about 1e-45), negatives or NaNs."""
    fast, _, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    n, k = 40, 9
    # the smallest subnormal, its negative, the largest subnormal, the smallest normal, ...
    bits = [0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0, 0x80000000, 0x7FC00000,
            0x7F800000, 0x40000000, 0xC0400000]
    output = np.resize(np.array(bits, np.uint32).view(np.float32), (n, k))
    passes = np.resize(np.array([0, 0, 0, 1, 0, 0, 0, 1, 1, 0], bool), (n, k))
    d = rng.standard_normal((n, k)).astype(np.float32) + 4.0  # never 0
    want = np.where(passes, d, np.float32(0))
    got = cp.array(d)
    fast.kernels.relu_backward(got, cp.asarray(output))
    np.testing.assert_array_equal(host(got), want)
    got, sums = cp.array(d), poisoned(cp, (1, k), np.float32)
    fast.kernels.relu_backward_column_sum(got, cp.asarray(output), sums)
    np.testing.assert_array_equal(host(got), want)
    # one output column of dz, weight 1: dz @ w.T is dz's column again
    w, out = np.ones((k, 1), np.float32), poisoned(cp, (n, k), np.float32)
    fast.kernels.narrow_dinputs_relu_bgrad(cp.array(d[:, :1], order="C"), cp.asarray(w), out,
                                           cp.asarray(output), poisoned(cp, (1, k), np.float32))
    np.testing.assert_array_equal(host(out), np.where(passes, d[:, :1], np.float32(0)))


@pytest.mark.parametrize("shape", SHAPES + [(40, 33)] + WIDE_SHAPES)
@pytest.mark.parametrize("relu", [True, False])
def test_below_a_dense_layer_the_bf16_passes_write_bfloat16_alone(backends, shape, relu, rng):
    """Precision "bf16", a hidden layer below another Dense layer: bias_act with only16 writes
    the bf16 result alone (z16: the same bits as the float32 pass's result rounded; z left as
    the GEMM wrote it), and relu_backward_column_sum, reading that bf16 output, the ReLU gradient
    in bf16 alone with its float32 column sums (dvalues only read): the same bits as the
    relu_backward kernel on the widened output, column_sum and to_bf16, NaNs, signed zeros and a
    float32 subnormal that bfloat16 rounds to 0 (no gradient passes it) included."""
    from gpunn.backends.bf16 import widen

    fast, ref, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    n, k = shape
    specials = [np.nan, -0.0, 0.0, 1e-45, -1.0, np.inf, -np.nan, 1 + 2**-8]
    z = rng.standard_normal(shape).astype(np.float32)
    z.flat[:len(specials)] = specials[:z.size]
    b = rng.standard_normal((1, k)).astype(np.float32)
    b[0, :len(specials)] = 0.0
    plain, alone = cp.array(z), cp.array(z)
    z16 = cp.full(shape, 0xFFFF, np.uint16)
    fast.kernels.bias_act(plain, cp.asarray(b), relu)
    assert fast.kernels.bias_act(alone, cp.asarray(b), relu, z16, only16=True) is z16
    np.testing.assert_array_equal(host(alone), z)  # not written
    np.testing.assert_array_equal(host(z16), host(ref.to_bf16(plain, out=cp.empty(shape, np.uint16))))
    with pytest.raises(ValueError, match="only16 needs z16"):
        fast.kernels.bias_act(alone, cp.asarray(b), relu, only16=True)

    d = rng.standard_normal(shape).astype(np.float32)
    d.flat[:len(specials)] = specials[:d.size]
    output = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    output.flat[::5] = (specials * d.size)[:len(output.flat[::5])]
    output16 = ref.to_bf16(cp.asarray(output), out=cp.empty(shape, np.uint16))
    want = fast.kernels.relu_backward(cp.array(d), widen(cp, output16))
    want_sums = fast.kernels.column_sum(want, poisoned(cp, (1, k), np.float32))
    want16 = ref.to_bf16(want, out=cp.empty(shape, np.uint16))
    dvalues, got_sums = cp.array(d), poisoned(cp, (1, k), np.float32)
    got16 = cp.full(shape, 0xFFFF, np.uint16)
    assert fast.kernels.relu_backward_column_sum(dvalues, output16, got_sums, got16) is got16
    np.testing.assert_array_equal(host(dvalues).view(np.uint32), d.view(np.uint32))  # only read
    np.testing.assert_array_equal(host(got_sums).view(np.uint32), host(want_sums).view(np.uint32))
    np.testing.assert_array_equal(host(got16), host(want16))
    tiny = output == np.float32(1e-45)  # passes in float32, not in bf16
    assert (host(got16)[tiny] == 0).all() and (tiny.any() or d.size < 16)
    with pytest.raises(ValueError, match="d16 is needed"):
        fast.kernels.relu_backward_column_sum(dvalues, output16, got_sums)


@pytest.mark.parametrize("shape", [(1, 2), (300, 3), (64, 1000), (33, 65)])
def test_softmax_cross_entropy_writes_the_bf16_copy_of_its_gradient(backends, shape, rng):
    """dlogits16 (precision "bf16"): the same dlogits, probabilities and losses as without it,
    and dlogits rounded as to_bf16 rounds it, every element of the poisoned copy written."""
    fast, ref, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    n, k = shape
    logits = rand(cp, rng, shape, np.float32) * 3
    labels = cp.asarray(rng.integers(0, k, n))
    plain = [poisoned(cp, shape, np.float32), poisoned(cp, shape, np.float32),
             poisoned(cp, (n,), np.float32)]
    fused = [poisoned(cp, shape, np.float32), poisoned(cp, shape, np.float32),
             poisoned(cp, (n,), np.float32)]
    dlogits16 = cp.full(shape, 0xFFFF, np.uint16)
    fast.softmax_cross_entropy(logits, labels, *plain)
    fast.softmax_cross_entropy(logits, labels, *fused, dlogits16)
    for got, want in zip(fused, plain):
        np.testing.assert_array_equal(host(got), host(want))
    np.testing.assert_array_equal(host(dlogits16),
                                  host(ref.to_bf16(plain[1], out=cp.empty(shape, np.uint16))))


@pytest.mark.parametrize("x_offset, out_offset", [(0, 0), (1, 0), (0, 1), (4, 4), (2, 8)])
def test_float_to_bf16_at_any_size_and_alignment(backends, x_offset, out_offset, rng):
    """Four values a thread where both arrays are aligned for it, one at a time for the rest or
    for a misaligned pair: the same roundings at every size and offset, and nothing written
    outside the output."""
    fast, ref, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    base = cp.asarray(rng.standard_normal(1100).astype(np.float32))
    for size in [*range(10), 1001]:
        x = base[x_offset:x_offset + size]
        out_base = cp.full(size + 16, 0xABCD, np.uint16)
        out = out_base[out_offset:out_offset + size]
        fast.to_bf16(x, out=out)
        want = ref.to_bf16(x, out=cp.empty(size, np.uint16))
        np.testing.assert_array_equal(host(out), host(want))
        rest = np.delete(host(out_base), np.arange(out_offset, out_offset + size))
        assert (rest == 0xABCD).all(), f"size {size}: written outside the output"


#: (rows, inputs, outputs): one of each, odd sizes, each of the weight gradient's tiles (16, 8,
#: 4, 2 and 1 rows of dw a warp for 1, 2, 3-4, 5-8 and 9-16 outputs), inputs short of a lane's
#: first pass and past several, and inputs (forward) and rows (weight and bias gradients) past
#: several of the reads a lane makes ahead (kernels.cu's NARROW_AHEAD).
NARROW = [(1, 1, 1), (9, 70, 1), (5, 3, 2), (300, 64, 3), (129, 31, 5), (40, 100, 9), (33, 65, 10),
          (67, 40, 16), (70, 300, 10), (300, 40, 12), (300, 20, 1)]


@pytest.mark.parametrize("n, m, k", NARROW)
@pytest.mark.parametrize("operands", ["float32", "float64", "bf16"])
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_the_narrow_kernels_compute_a_dense_layers_products(backends, n, m, k, operands, rows, rng,
                                                           monkeypatch):
    """narrow_forward (out = x @ w + b), narrow_weight_grads (dw = x.T @ dz, db = the column
    sums of dvalues) and narrow_dinputs_relu_bgrad (dx = dz @ w.T where the ReLU below passed,
    its column sums, its bf16 copy) for up to 16 outputs: the float64 products of the same
    operands (under bf16 the bfloat16 copies, widened, where db sums the float32 dvalues) to the
    dtype's rounding, every element of the poisoned outputs written; asked for no db, the same
    dw and nothing else; the bf16 copy of dx rounded as to_bf16 rounds it. Under bf16 the ReLU's
    output is bfloat16 too, and dx goes to the bf16 array alone. The forward with a
    row a warp, two and four (launch.narrow_rows picks by the rows there are)."""
    from gpunn.backends.bf16 import widen
    from gpunn.backends.cuda import launch

    monkeypatch.setattr(launch, "narrow_rows", lambda n: rows)

    fast, ref, cp = backends
    host = np.asarray if cp is np else cp.asnumpy
    dtype = np.float64 if operands == "float64" else np.float32
    x, w, b = rand(cp, rng, (n, m), dtype), rand(cp, rng, (m, k), dtype), rand(cp, rng, (1, k), dtype)
    dvalues = rand(cp, rng, (n, k), dtype)
    if operands == "bf16":
        x, w, dz = (ref.to_bf16(a, out=cp.empty(a.shape, np.uint16)) for a in (x, w, dvalues))
    else:
        dz = dvalues

    def f64(a):
        a = host(a)
        return (widen(np, a) if a.dtype == np.uint16 else a).astype(np.float64)

    close = {"rtol": 1e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    out = fast.kernels.narrow_forward(x, w, b, poisoned(cp, (n, k), dtype))
    np.testing.assert_allclose(host(out), f64(x) @ f64(w) + f64(b), **close)
    dw, db = poisoned(cp, (m, k), dtype), poisoned(cp, (1, k), dtype)
    fast.kernels.narrow_weight_grads(x, dz, dvalues, dw, db)
    np.testing.assert_allclose(host(dw), f64(x).T @ f64(dz), **close)
    np.testing.assert_allclose(host(db), f64(dvalues).sum(axis=0, keepdims=True), **close)
    alone = poisoned(cp, (m, k), dtype)
    fast.kernels.narrow_weight_grads(x, dz, dvalues, alone, None)
    np.testing.assert_array_equal(host(alone), host(dw))

    output = rand(cp, rng, (n, m), dtype)
    output[output < 0] = 0  # a ReLU's output, a NaN at the first: no gradient passes it
    output[0, 0] = np.nan
    if operands == "bf16":  # the layer below keeps its output in bfloat16 alone
        output = ref.to_bf16(output, out=cp.empty(output.shape, np.uint16))
    dx, sums = poisoned(cp, (n, m), dtype), poisoned(cp, (1, m), dtype)
    d16 = cp.full((n, m), 0xFFFF, np.uint16) if operands != "float64" else None
    got = fast.kernels.narrow_dinputs_relu_bgrad(dz, w, dx, output, sums, d16)
    want = np.where(f64(output) > 0, f64(dz) @ f64(w).T, 0.0)
    np.testing.assert_allclose(host(sums), want.sum(axis=0, keepdims=True), **close)
    if operands == "bf16":  # the result in bfloat16 alone: dx is not written
        assert got is d16 and np.isnan(host(dx)).all()
        np.testing.assert_allclose(f64(d16), want, rtol=2**-8, atol=1e-30)
        return
    assert got is dx
    np.testing.assert_allclose(host(dx), want, **close)
    if d16 is not None:
        np.testing.assert_array_equal(host(d16), host(ref.to_bf16(dx, out=cp.empty((n, m), np.uint16))))


@pytest.mark.gpu
@pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_on_a_gpu_the_output_layers_products_are_timed_once_and_train_as_numpy(precision):
    """On a device the narrow kernels are timed against the GEMM path for the output layer's
    forward, its weight and bias gradients and the gradient it hands down (10 outputs), once
    each, in the planned step's warm-up; whichever is kept, training follows NumPy's to
    float32's rounding (tf32 and bf16: to theirs)."""
    import gpunn as nn
    from gpunn.backends import get_backend

    if precision != "fp32" and get_backend("cupy").why_not(precision):
        pytest.skip(get_backend("cupy").why_not(precision))
    X, y = nn.datasets.spiral_data(samples=200, classes=10, seed=3)
    X = np.hstack([X, np.sin(3 * X), np.cos(5 * X), X ** 2]).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))  # every batch of every class, unshuffled
    X, y = X[order], y[order]
    choice = get_backend("cupy").narrow_choice
    runs = []
    for backend in ("cupy", "numpy"):
        model = nn.Sequential([nn.Dense(8, 96, init="he", seed=1), nn.ReLU(),
                               nn.Dense(96, 10, seed=3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=0.5), backend=backend,
                      precision=precision if backend == "cupy" else "fp32")
        before = set(choice.times)
        runs.append(model.fit(X, y, epochs=3, batch_size=500, shuffle=False, verbose=0).history)
        if backend == "cupy":
            timed = [problem[:3] for problem in choice.times if problem not in before]
            assert sorted(timed) == [("dinputs", (500, 10), (96, 10)),
                                     ("forward", (500, 96), (96, 10)),
                                     ("weight_grads", (500, 96), (96, 10))]
    close = {"fp32": 1e-4, "tf32": 2e-2, "bf16": 5e-2}[precision]
    for key in runs[1]:
        np.testing.assert_allclose(runs[0][key], runs[1][key], rtol=close, atol=close)


def test_the_narrow_forward_takes_four_rows_a_warp_where_the_warps_still_fill_the_gpu():
    from gpunn.backends.cuda import launch

    assert launch.NARROW_WARPS == 1024
    assert [launch.narrow_rows(n) for n in (1, 300, 1024, 2047, 2048, 4095, 4096, 8192)] == \
        [1, 1, 1, 1, 2, 2, 4, 4]
