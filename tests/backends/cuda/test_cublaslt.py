"""The cuBLASLt epilogue wrapper (gpunn/backends/cuda/cublaslt.py), checked on the CPU: a stand-in
for nvmath's cublasLt module runs the column-major matmul and epilogue it is asked for on NumPy
memory, reading descriptors, layouts and pointers as cuBLASLt would. What this shows: operands,
leading dimensions, transposes, bias and mask pointers are wired so that the row-major results are
right; that "no algorithm" leaves everything untouched. What it cannot show: cuBLASLt's own
behaviour (tests/test_gpu_kernels.py checks that on a GPU)."""

from __future__ import annotations

import ctypes
import itertools
import types

import numpy as np
import pytest
from support.cuda import DeviceLike, column_major

from gpunn.backends.bf16 import BF16_BITS, round_to_bf16, widen
from gpunn.backends.cuda.cublaslt import CANDIDATES, Epilogues, relu_mask_shape

EPILOGUE = types.SimpleNamespace(DEFAULT=1, BIAS=4, RELU_BIAS=6, RELU_AUX_BIAS=134,
                                 DRELU_BGRAD=152)
DESC = types.SimpleNamespace(TRANSA=3, TRANSB=4, EPILOGUE=7, BIAS_POINTER=8,
                             EPILOGUE_AUX_POINTER=11, EPILOGUE_AUX_LD=12)
PREF = types.SimpleNamespace(MAX_WORKSPACE_BYTES=1, MIN_ALIGNMENT_A_BYTES=5,
                             MIN_ALIGNMENT_B_BYTES=6, MIN_ALIGNMENT_C_BYTES=7,
                             MIN_ALIGNMENT_D_BYTES=8)
TYPES = {0: np.float32, 1: np.float64, 14: BF16_BITS}


def read(ptr: int, dtype, count: int = 1) -> np.ndarray:
    size = np.dtype(dtype).itemsize * count
    return np.frombuffer((ctypes.c_char * size).from_address(ptr), dtype=dtype, count=count)


class FakeLt:
    """Just enough of nvmath.bindings.cublasLt, computing in NumPy. The ReLU mask format is this
    stand-in's own (bit i % 8 of byte i // 8 of column j, columns aux_ld bits apart). It offers
    ``algorithms`` algorithms per problem, numbered from 1 in the first word of each heuristic
    result; ``algos`` lists the one each matmul ran, and one in ``failing`` raises; one in
    ``not_offered`` comes with a state other than success."""

    Epilogue, MatmulDescAttribute, MatmulPreferenceAttribute = EPILOGUE, DESC, PREF
    cuBLASLtError = RuntimeError
    matmul_heuristic_result_dtype = np.dtype([("algo", "<u8", (8,)), ("workspace_size", "<u8"),
                                              ("state", "<i4"), ("waves_count", "<f4"),
                                              ("reserved", "<i4", (4,))])

    def __init__(self, unsupported=(), algorithms=1, failing=(), not_offered=()) -> None:
        self.unsupported = set(unsupported)
        self.algorithms, self.failing, self.not_offered = algorithms, set(failing), set(not_offered)
        self.algos: list[int] = []
        self.objects: dict[int, dict] = {}
        self.calls: list[tuple] = []
        self.planned: list[dict] = []  # the epilogue pointers and workspace each plan saw
        self.destroyed: list[int] = []

    def _new(self, **fields) -> int:
        self.objects[len(self.objects) + 1] = fields
        return len(self.objects)

    @staticmethod
    def get_matmul_desc_attribute_dtype(attr):
        return {3: np.int32, 4: np.int32, 7: np.uint32}.get(attr, np.int64)

    @staticmethod
    def get_matmul_preference_attribute_dtype(attr):
        return np.uint64 if attr == 1 else np.uint32

    def create(self) -> int:
        return 99

    def matmul_desc_create(self, compute, scale):
        return self._new(compute=compute, scale=scale)

    def matmul_desc_set_attribute(self, desc, attr, ptr, size):
        dtype = self.get_matmul_desc_attribute_dtype(attr)
        assert size == np.dtype(dtype).itemsize
        self.objects[desc][attr] = int(read(ptr, dtype)[0])

    def matrix_layout_create(self, dtype, rows, cols, ld):
        assert ld >= rows, "column-major: the leading dimension covers a column"
        return self._new(dtype=TYPES[dtype], dtype_code=dtype, rows=rows, cols=cols, ld=ld)

    def matmul_preference_create(self):
        return self._new()

    def matmul_preference_set_attribute(self, pref, attr, ptr, size):
        self.objects[pref][attr] = int(read(ptr, self.get_matmul_preference_attribute_dtype(attr))[0])

    def matmul_preference_destroy(self, pref):
        pass

    def matrix_layout_destroy(self, layout):
        self.destroyed.append(layout)

    def matmul_desc_destroy(self, desc):
        self.destroyed.append(desc)

    def matmul_algo_get_heuristic(self, handle, desc, a, b, c, d, pref, count, results, found):
        assert count >= 1 and self.objects[pref][PREF.MAX_WORKSPACE_BYTES] > 0
        attrs = self.objects[desc]
        self.planned.append({"bias": attrs.get(DESC.BIAS_POINTER),
                             "aux": attrs.get(DESC.EPILOGUE_AUX_POINTER),
                             "workspace": self.objects[pref][PREF.MAX_WORKSPACE_BYTES],
                             "count": count})
        supported = self.objects[desc][DESC.EPILOGUE] not in self.unsupported
        offered = min(count, self.algorithms) if supported else 0
        size = self.matmul_heuristic_result_dtype.itemsize
        state = self.matmul_heuristic_result_dtype.fields["state"][1]
        for i in range(offered):
            ctypes.c_uint64.from_address(results + i * size).value = i + 1
            ctypes.c_int32.from_address(results + i * size + state).value = \
                15 if i + 1 in self.not_offered else 0  # CUBLAS_STATUS_NOT_SUPPORTED
        ctypes.c_int32.from_address(found).value = offered

    def _matrix(self, ptr, layout):
        lay = self.objects[layout]
        m = column_major(ptr, lay["rows"], lay["cols"], lay["ld"], lay["dtype"])
        return widen(np, m) if lay["dtype"] == BF16_BITS else m  # bf16 products are exact

    def matmul(self, handle, desc, alpha, a, adesc, b, bdesc, beta, c, cdesc, d, ddesc, algo,
               workspace, workspace_size, stream):
        algo = int(read(algo, np.uint64)[0])
        if algo in self.failing:
            raise self.cuBLASLtError(f"CUBLAS_STATUS_NOT_SUPPORTED (algorithm {algo})")
        attrs = self.objects[desc]
        epilogue = attrs[DESC.EPILOGUE]
        self.calls.append((epilogue, attrs[DESC.TRANSA], attrs[DESC.TRANSB]))
        self.algos.append(algo)
        A, B, D = self._matrix(a, adesc), self._matrix(b, bdesc), self._matrix(d, ddesc)
        assert c == d and cdesc == ddesc
        assert self.objects[desc]["scale"] == self.objects[ddesc]["dtype_code"], \
            "alpha and beta are read in D's type"
        opA = A.T if attrs[DESC.TRANSA] else A
        opB = B.T if attrs[DESC.TRANSB] else B
        assert opA.shape[1] == opB.shape[0] and D.shape == (opA.shape[0], opB.shape[1])
        m, n = D.shape
        al = read(alpha, D.dtype)[0]
        result = al * (opA @ opB)
        bias = read(attrs[DESC.BIAS_POINTER], D.dtype, m) if DESC.BIAS_POINTER in attrs else None
        if epilogue in (EPILOGUE.BIAS, EPILOGUE.RELU_BIAS, EPILOGUE.RELU_AUX_BIAS):
            result = result + bias[:, None]
        if epilogue == EPILOGUE.RELU_AUX_BIAS:
            self._mask(attrs, m, n)[...] = result > 0
        if epilogue in (EPILOGUE.RELU_BIAS, EPILOGUE.RELU_AUX_BIAS):
            result = np.maximum(result, 0)
        if epilogue == EPILOGUE.DRELU_BGRAD:
            result = result * np.asarray(self._mask(attrs, m, n))
            bias[...] = result.sum(axis=1)  # bias was read from the pointer: writes go there
        D[...] = result

    def _mask(self, attrs, m, n):
        """A (m, n) boolean view-and-write-back helper over the bit mask."""
        ld_bytes = attrs[DESC.EPILOGUE_AUX_LD] // 8
        assert ld_bytes % 16 == 0 and ld_bytes * 8 >= m
        raw = read(attrs[DESC.EPILOGUE_AUX_POINTER], np.uint8, ld_bytes * n)
        return BitMask(raw.reshape(n, ld_bytes), m)


class BitMask:
    """Bits of a (columns, bytes) uint8 array as an (m, n) boolean matrix, readable and writable."""

    def __init__(self, raw: np.ndarray, m: int) -> None:
        self.raw, self.m = raw, m

    def __array__(self, dtype=None, copy=None):
        bits = np.unpackbits(self.raw, axis=1, bitorder="little")[:, :self.m]
        return bits.T.astype(bool)

    def __setitem__(self, key, value):
        bits = np.zeros((self.raw.shape[0], self.raw.shape[1] * 8), np.uint8)
        bits[:, :self.m] = np.asarray(value).T
        self.raw[...] = np.packbits(bits, axis=1, bitorder="little")


def cupy_stand_in(capturing=lambda: False):
    def empty(shape, dtype):
        return DeviceLike(np.empty(shape, dtype))

    stream = types.SimpleNamespace(ptr=7, is_capturing=capturing)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: stream),
                                 empty=empty, uint8=np.uint8)


class Dev(DeviceLike):
    """DeviceLike with flags.c_contiguous, as the wrapper checks bias and mask buffers."""

    def __init__(self, arr: np.ndarray) -> None:
        super().__init__(arr)
        self.flags = types.SimpleNamespace(c_contiguous=arr.flags.c_contiguous)


def epilogues(lt: FakeLt, capturing=lambda: False) -> Epilogues:
    e = Epilogues(cupy_stand_in(capturing))  # nvmath may be absent: install the stand-in anyway
    e.lt = lt
    return e


def aligned(arr: np.ndarray) -> np.ndarray:
    """A copy of ``arr`` at a 256-byte aligned address (as CuPy's pool gives)."""
    raw = np.empty(arr.nbytes + 256, np.uint8)
    start = -raw.ctypes.data % 256
    out = raw[start:start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


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


def tuned(algorithms=4, failing=(), costs=None, capturing=lambda: False):
    """Epilogues over a FakeLt offering ``algorithms``, with a timer that runs the call it times
    and returns the cost of the algorithm that ran (``costs``, by number)."""
    lt = FakeLt(algorithms=algorithms, failing=failing)
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
    it is the fastest, matmul declines the problem from then on, writing nothing; where it is
    not, the fastest algorithm runs. Epilogue problems are not given one."""
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


def test_stand_in_matches_the_real_bindings():
    """Names, values and call signatures of the stand-in are those of nvmath's cublasLt, so the
    wrapper tested against it calls the real module the same way (where nvmath is installed)."""
    import inspect
    import re

    lt = pytest.importorskip("nvmath.bindings.cublasLt")
    for group, real in ((EPILOGUE, lt.Epilogue), (DESC, lt.MatmulDescAttribute),
                        (PREF, lt.MatmulPreferenceAttribute)):
        for name, value in vars(group).items():
            assert int(getattr(real, name)) == value, name
    real = lt.matmul_heuristic_result_dtype  # the wrapper passes its address as the algorithm's
    assert real.itemsize == FakeLt.matmul_heuristic_result_dtype.itemsize
    assert real.fields["algo"][1] == 0
    assert real.fields["state"] == FakeLt.matmul_heuristic_result_dtype.fields["state"]  # tuning reads it
    for name in ("matmul_desc_create", "matmul_desc_set_attribute", "matrix_layout_create",
                 "matmul_preference_create", "matmul_preference_set_attribute",
                 "matmul_preference_destroy", "matmul_algo_get_heuristic", "matmul", "create",
                 "matrix_layout_destroy", "matmul_desc_destroy"):
        doc_args = re.match(rf"{name}\((.*?)\)", getattr(lt, name).__doc__).group(1)
        real_count = len([a for a in doc_args.split(",") if a.strip()])
        fake_count = len(inspect.signature(getattr(FakeLt(), name)).parameters)
        assert fake_count == real_count, name
    for attr in (DESC.TRANSA, DESC.TRANSB, DESC.EPILOGUE, DESC.BIAS_POINTER, DESC.EPILOGUE_AUX_LD):
        assert FakeLt.get_matmul_desc_attribute_dtype(attr) is lt.get_matmul_desc_attribute_dtype(attr)
