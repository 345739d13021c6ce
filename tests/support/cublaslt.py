"""A stand-in for nvmath's cuBLASLt bindings (``FakeLt``), computing in NumPy on the memory the
pointers it is given point at, and CuPy-like wrappers for NumPy arrays; for the tests of the
epilogue wrapper (tests/backends/cuda/test_cublaslt.py) and of the CuPy backend's routing through
it on the CPU (``NumpyEpilogues``). What it cannot show is cuBLASLt's own behaviour: the gpu tests
check that."""

from __future__ import annotations

import ctypes
import types

import numpy as np

from gpunn.backends.bf16 import BF16_BITS, round_to_bf16, widen
from gpunn.backends.cuda.cublaslt import Epilogues

from .cuda import DeviceLike, column_major

EPILOGUE = types.SimpleNamespace(DEFAULT=1, BIAS=4, RELU_BIAS=6, RELU_AUX_BIAS=134,
                                 DRELU_BGRAD=152)
DESC = types.SimpleNamespace(TRANSA=3, TRANSB=4, EPILOGUE=7, BIAS_POINTER=8,
                             EPILOGUE_AUX_POINTER=11, EPILOGUE_AUX_LD=12, BIAS_DATA_TYPE=26)
PREF = types.SimpleNamespace(MAX_WORKSPACE_BYTES=1, MIN_ALIGNMENT_A_BYTES=5,
                             MIN_ALIGNMENT_B_BYTES=6, MIN_ALIGNMENT_C_BYTES=7,
                             MIN_ALIGNMENT_D_BYTES=8)
CONFIG = types.SimpleNamespace(SPLITK_NUM=2, REDUCTION_SCHEME=3)
CAP = types.SimpleNamespace(SPLITK_SUPPORT=0, REDUCTION_SCHEME_MASK=1)
REDUCTION = types.SimpleNamespace(INPLACE=1, COMPUTE_TYPE=2)
TYPES = {0: np.float32, 1: np.float64, 14: BF16_BITS}
CODES = {np.dtype(dtype): code for code, dtype in TYPES.items()}


def read(ptr: int, dtype, count: int = 1) -> np.ndarray:
    size = np.dtype(dtype).itemsize * count
    return np.frombuffer((ctypes.c_char * size).from_address(ptr), dtype=dtype, count=count)


class FakeLt:
    """Just enough of nvmath.bindings.cublasLt, computing in NumPy. The ReLU mask format is this
    stand-in's own (bit i % 8 of byte i // 8 of column j, columns aux_ld bits apart). It offers
    ``algorithms`` algorithms per problem, numbered from 1 in the first word of each heuristic
    result; ``algos`` lists the one each matmul ran, and one in ``failing`` raises; one in
    ``not_offered`` comes with a state other than success.

    Split-K: an algorithm in ``splittable`` can split its sum over k (its configuration in the
    algorithm's second and third words: parts and reduction scheme), with the reduction schemes
    in ``schemes``; ``waves`` gives each algorithm's waves count (0.25 where not given), which a
    split multiplies; ``matmul_algo_check`` refuses an epilogue in ``unsplittable``, a scheme the
    algorithm lacks, or an in-place reduction into bfloat16, and wants the parts' float32 room in
    the workspace for the compute-type scheme. A split algorithm sums k in its parts, in order,
    and ``algos`` lists it as (number, parts, scheme)."""

    Epilogue, MatmulDescAttribute, MatmulPreferenceAttribute = EPILOGUE, DESC, PREF
    MatmulAlgoConfigAttribute, MatmulAlgoCapAttribute, ReductionScheme = CONFIG, CAP, REDUCTION
    cuBLASLtError = RuntimeError
    matmul_heuristic_result_dtype = np.dtype([("algo", "<u8", (8,)), ("workspace_size", "<u8"),
                                              ("state", "<i4"), ("waves_count", "<f4"),
                                              ("reserved", "<i4", (4,))])

    def __init__(self, unsupported=(), algorithms=1, failing=(), not_offered=(), splittable=(),
                 schemes=REDUCTION.INPLACE | REDUCTION.COMPUTE_TYPE, waves=None,
                 unsplittable=()) -> None:
        self.unsupported = set(unsupported)
        self.algorithms, self.failing, self.not_offered = algorithms, set(failing), set(not_offered)
        self.splittable, self.schemes, self.waves = set(splittable), schemes, waves or {}
        self.unsplittable = set(unsplittable)
        self.checked: list[tuple] = []  # (algorithm, parts, scheme) of each check
        self.algos: list[int | tuple[int, int, int]] = []  # a split one: (number, parts, scheme)
        self.objects: dict[int, dict] = {}
        self.calls: list[tuple] = []
        self.planned: list[dict] = []  # the epilogue pointers and workspace each plan saw
        self.destroyed: list[int] = []

    def _new(self, **fields) -> int:
        self.objects[len(self.objects) + 1] = fields
        return len(self.objects)

    @staticmethod
    def get_matmul_desc_attribute_dtype(attr):
        return {3: np.int32, 4: np.int32, 7: np.uint32, 26: np.int32}.get(attr, np.int64)

    @staticmethod
    def get_matmul_preference_attribute_dtype(attr):
        return np.uint64 if attr == 1 else np.uint32

    @staticmethod
    def get_matmul_algo_config_attribute_dtype(attr):
        return np.int32 if attr == CONFIG.SPLITK_NUM else np.uint32

    @staticmethod
    def get_matmul_algo_cap_attribute_dtype(attr):
        return np.int32 if attr == CAP.SPLITK_SUPPORT else np.uint32

    @staticmethod
    def _words(algo):
        return read(algo, np.uint64, 3)  # number, split-K parts (0: none set), reduction scheme

    def matmul_algo_config_get_attribute(self, algo, attr, buf, size, written):
        dtype = self.get_matmul_algo_config_attribute_dtype(attr)
        assert size == np.dtype(dtype).itemsize
        read(buf, dtype)[...] = self._words(algo)[1 if attr == CONFIG.SPLITK_NUM else 2]

    def matmul_algo_config_set_attribute(self, algo, attr, buf, size):
        dtype = self.get_matmul_algo_config_attribute_dtype(attr)
        assert size == np.dtype(dtype).itemsize
        self._words(algo)[1 if attr == CONFIG.SPLITK_NUM else 2] = read(buf, dtype)[0]

    def matmul_algo_cap_get_attribute(self, algo, attr, buf, size, written):
        dtype = self.get_matmul_algo_cap_attribute_dtype(attr)
        assert size == np.dtype(dtype).itemsize
        number = int(self._words(algo)[0])
        read(buf, dtype)[...] = (number in self.splittable if attr == CAP.SPLITK_SUPPORT
                                 else self.schemes)

    def matmul_algo_check(self, handle, desc, a, b, c, d, algo, result):
        number, parts, scheme = (int(w) for w in self._words(algo))
        self.checked.append((number, parts, scheme))
        out = self.objects[d]
        if (number not in self.splittable or not scheme & self.schemes
                or self.objects[desc][DESC.EPILOGUE] in self.unsplittable
                or (scheme == REDUCTION.INPLACE and out["dtype"] == BF16_BITS)):
            raise self.cuBLASLtError("CUBLAS_STATUS_NOT_SUPPORTED (algo check)")
        fields = self.matmul_heuristic_result_dtype.fields
        room = 4 * out["rows"] * out["cols"] * parts if scheme == REDUCTION.COMPUTE_TYPE else 0
        ctypes.c_uint64.from_address(result + fields["workspace_size"][1]).value = room
        ctypes.c_float.from_address(result + fields["waves_count"][1]).value = \
            self.waves.get(number, 0.25) * parts

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
        waves = self.matmul_heuristic_result_dtype.fields["waves_count"][1]
        for i in range(offered):
            ctypes.c_uint64.from_address(results + i * size).value = i + 1
            ctypes.c_int32.from_address(results + i * size + state).value = \
                15 if i + 1 in self.not_offered else 0  # CUBLAS_STATUS_NOT_SUPPORTED
            ctypes.c_float.from_address(results + i * size + waves).value = \
                self.waves.get(i + 1, 0.25)
        ctypes.c_int32.from_address(found).value = offered

    def _matrix(self, ptr, layout, raw=False):
        lay = self.objects[layout]
        m = column_major(ptr, lay["rows"], lay["cols"], lay["ld"], lay["dtype"])
        if raw or lay["dtype"] != BF16_BITS:
            return m
        return widen(np, m)  # bf16 products are exact in float32

    def matmul(self, handle, desc, alpha, a, adesc, b, bdesc, beta, c, cdesc, d, ddesc, algo,
               workspace, workspace_size, stream):
        algo, parts, scheme = (int(w) for w in self._words(algo))
        if algo in self.failing:
            raise self.cuBLASLtError(f"CUBLAS_STATUS_NOT_SUPPORTED (algorithm {algo})")
        attrs = self.objects[desc]
        epilogue = attrs[DESC.EPILOGUE]
        self.calls.append((epilogue, attrs[DESC.TRANSA], attrs[DESC.TRANSB]))
        self.algos.append((algo, parts, scheme) if parts > 1 else algo)
        A, B, D = self._matrix(a, adesc), self._matrix(b, bdesc), self._matrix(d, ddesc, raw=True)
        assert c == d and cdesc == ddesc
        # alpha and beta are read in D's type, or float32 for a bfloat16 D (compute type 32F)
        scale = np.dtype(np.float32) if D.dtype == BF16_BITS else D.dtype
        assert TYPES[self.objects[desc]["scale"]] == scale, "alpha and beta: the scale type"
        opA = A.T if attrs[DESC.TRANSA] else A
        opB = B.T if attrs[DESC.TRANSB] else B
        assert opA.shape[1] == opB.shape[0] and D.shape == (opA.shape[0], opB.shape[1])
        m, n = D.shape
        al = read(alpha, scale)[0]
        if parts > 1:  # the sum over k in parts, added up in order
            cuts = np.array_split(np.arange(opA.shape[1]), parts)
            result = al * sum(opA[:, cut] @ opB[cut, :] for cut in cuts)
        else:
            result = al * (opA @ opB)
        # The bias (or its gradient) in D's type unless BIAS_DATA_TYPE says otherwise, as cuBLASLt
        bias_type = TYPES[attrs[DESC.BIAS_DATA_TYPE]] if DESC.BIAS_DATA_TYPE in attrs else D.dtype
        bias = read(attrs[DESC.BIAS_POINTER], bias_type, m) if DESC.BIAS_POINTER in attrs else None
        if epilogue in (EPILOGUE.BIAS, EPILOGUE.RELU_BIAS, EPILOGUE.RELU_AUX_BIAS):
            result = result + bias[:, None]
        if epilogue == EPILOGUE.RELU_AUX_BIAS:
            self._mask(attrs, m, n)[...] = result > 0
        if epilogue in (EPILOGUE.RELU_BIAS, EPILOGUE.RELU_AUX_BIAS):
            result = np.maximum(result, 0)
        if epilogue == EPILOGUE.DRELU_BGRAD:
            result = result * np.asarray(self._mask(attrs, m, n))
            bias[...] = result.sum(axis=1)  # bias was read from the pointer: writes go there
        if D.dtype == BF16_BITS:  # the float32 result rounded once, as it is written
            D[...] = round_to_bf16(np, result.astype(np.float32), np.empty(D.shape, BF16_BITS))
        else:
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


class NumpyEpilogues(Epilogues):
    """``Epilogues`` over a ``FakeLt``, taking the NumPy arrays of the emulated CuPy backend
    (tests/cuda_on_cpu) dressed as CuPy's. Untuned only: there is no device to time on."""

    def __init__(self, lt: FakeLt) -> None:
        super().__init__(cupy_stand_in())
        self.lt, self.why_not = lt, None

    def _matmul(self, epilogue, a, b, d, k, trans_a, trans_b, bias, mask, tf32, tune,
                fallback=None):
        assert not tune, "nothing to time on: configure the backend with tune_gemms=False"

        def dev(x):
            return None if x is None else Dev(x)

        return super()._matmul(epilogue, dev(a), dev(b), dev(d), k, trans_a, trans_b, dev(bias),
                               dev(mask), tf32, tune, fallback)


def with_epilogues(backend, lt: FakeLt):
    """The emulated CuPy ``backend`` (a fresh one: this changes it) with cuBLASLt epilogues
    computed by ``lt``, for a model that sets epilogue_policy "always" (or "never": nothing to
    time the two paths on) and tune_gemms False."""
    from gpunn.backends.cuda.epilogues import EpilogueChoice

    backend.epilogues = NumpyEpilogues(lt)
    backend.epilogue_choice = EpilogueChoice(backend.epilogues.cupy, available=True)
    return backend
