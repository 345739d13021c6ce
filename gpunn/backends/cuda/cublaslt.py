"""Dense-layer GEMMs with cuBLASLt epilogues: work that would be a separate pass over a large
matrix is done while the GEMM writes its result.

- forward, ``out = relu(inputs @ weights + biases)``: epilogue RELU_BIAS, or RELU_AUX_BIAS, which
  also keeps a bit mask of where the ReLU let values through (one bit per output);
- backward, the GEMM that makes the gradient for the layer below, ``dvalues @ weights.T``, with
  DRELU_BGRAD: that layer's ReLU gradient (from its mask) and its bias gradient (the column sums
  of the result) come out of the same call.

The layouts are the row-major to column-major swap of ``cublas.py``: a row-major (r, c) array is,
to cuBLASLt, a column-major (c, r) one, so the bias (one value per output column of ours) runs
along cuBLASLt's rows, as its epilogues want.

Plain GEMMs (``matmul``, epilogue DEFAULT) run here too when a model asks for tuned GEMMs.

Each distinct problem (shape, leading dimensions, transposes, alignment, operand types, precision,
epilogue) gets one descriptor and an algorithm, asked of cuBLASLt's heuristics once. Tuned
(``tune=True``, the backend option ``tune_gemms``), the heuristics are asked for up to
``CANDIDATES`` algorithms and each is timed on the first eager call (``timing.py``: the device's
work, behind a hold), and the fastest kept, as XLA does for its GEMMs; untuned, their first choice
runs. Tuned, the candidates also include split-K variants of the offered algorithms that leave
part of the device idle (``waves_count`` under 1: too few output tiles for its SMs, as medium's
1024 x 1024 products on an H200's 132 SMs, or a classifier's 10-column ones): the sum over k cut
into 2, 4, ... parts run side by side and then added up (``split_counts``), each variant that
cuBLASLt's own check accepts with the workspace there is. A tuned plain GEMM times cuBLAS's own
choice beside them (``fallback``): where cuBLAS is faster, ``matmul`` declines the problem from
then on, and the backend calls cuBLAS (on an H200, tuned medium tf32 steps had been 4% slower
than untuned ones, where cuBLAS runs every plain GEMM).
Every algorithm computes the same product, with its own order of summation. Where cuBLASLt has none
(an epilogue it does not offer for that case, float64 on some versions), the calls return False and
write nothing, and the backend takes its separate path.

Precision "bf16": A and B are bfloat16, summed in float32 (compute type 32F, alpha and beta
float32). D is float32, or for an epilogue that adds a bias or sums one's gradient, bfloat16: the
epilogue works on the float32 sums and rounds once as it writes D (a hidden layer's output, or the
gradient handed to the layer below, kept in bfloat16 alone). The bias and its gradient stay
float32 (``BIAS_DATA_TYPE``), as the model's biases are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..bf16 import BF16_BITS
from . import timing
from .cublas import ONE, ZERO, blas_ready

_log = logging.getLogger("gpunn")

WORKSPACE_BYTES = 32 << 20
#: What the heuristics may plan to use of the workspace: some epilogues need room beyond the
#: algorithm's own (nvmath leaves the same 256 bytes).
WORKSPACE_SLACK = 256
#: Planned problems kept (least recently used first out); a model uses a handful.
MAX_PROBLEMS = 256
#: Algorithms asked of the heuristics, and timed, for a tuned problem.
CANDIDATES = 8
#: Split-K variants: at most this many parts, each at least MIN_SPLIT_K long, and no more parts
#: than keep the launch within MAX_SPLIT_WAVES waves of the device.
MAX_SPLITS = 32
MIN_SPLIT_K = 64
MAX_SPLIT_WAVES = 2.0

# cudaDataType and cublasComputeType_t values (library_types.h, cublas_api.h).
CUDA_R_32F, CUDA_R_64F, CUDA_R_16BF = 0, 1, 14
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
DATA_TYPES = {np.dtype(np.float32): CUDA_R_32F, np.dtype(np.float64): CUDA_R_64F,
              BF16_BITS: CUDA_R_16BF}


def scale_dtype(out: np.dtype) -> np.dtype:
    """The type alpha and beta are read in, and the bias (or its gradient) is kept in: D's, or
    float32 for a bfloat16 D (compute type 32F)."""
    return np.dtype(np.float32) if out == BF16_BITS else out


def split_counts(waves: float, k: int) -> list[int]:
    """The split-K part counts tried for an algorithm whose launch the heuristics say fills
    ``waves`` of the device: none where it is full (1 or more), else 2, 4, 8, ... while the parts
    stay within MAX_SPLIT_WAVES waves (2 and 4 where the heuristics did not say: 0), MAX_SPLITS
    parts and MIN_SPLIT_K of k each."""
    if waves >= 1:
        return []
    counts, parts = [], 2
    while (parts <= MAX_SPLITS and k // parts >= MIN_SPLIT_K
           and (waves * parts <= MAX_SPLIT_WAVES if waves > 0 else parts <= 4)):
        counts.append(parts)
        parts *= 2
    return counts


def relu_mask_shape(rows: int, cols: int) -> tuple[int, int]:
    """The uint8 array holding the ReLU bit mask of a row-major (rows, cols) output.

    cuBLASLt keeps one bit per element of its column-major (cols, rows) result, each column padded
    to a multiple of 128 bits: (rows, bytes per column) in our row-major terms."""
    return rows, 16 * math.ceil(math.ceil(cols / 8) / 16)


def _alignment(ptr: int) -> int:
    """The largest power of two (at most 256) that divides the address."""
    return min(256, ptr & -ptr) if ptr else 256


class Spec(NamedTuple):
    """What makes two cuBLASLt matmuls the same problem (column-major terms: D (m, n) =
    op(A) (m, k) @ op(B) (k, n)); the key of a planned ``_Problem``."""

    epilogue: int
    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldd: int
    trans_a: bool
    trans_b: bool
    aux_ld: int  # the ReLU mask's leading dimension in bits; 0 for none
    operands: np.dtype  # A and B: float32, float64 or bfloat16 bits
    out: np.dtype  # D: float32 or float64, or bfloat16 bits (bfloat16 A and B, with a bias)
    tf32: bool
    align_a: int
    align_b: int
    align_d: int
    align_bias: int
    align_mask: int
    candidates: int  # algorithms asked of the heuristics: CANDIDATES when tuned, else 1


class _Problem:
    """One cuBLASLt matmul set up: descriptor, layouts, the algorithms its heuristics offered and
    the one ``chosen`` (their first until tuned)."""

    def __init__(self, lt: Any, handle: int, spec: Spec, bias_ptr: int, aux_ptr: int) -> None:
        self.lt = lt
        operands, out = DATA_TYPES[spec.operands], DATA_TYPES[spec.out]
        scale = DATA_TYPES[scale_dtype(spec.out)]
        compute = COMPUTE_64F if out == CUDA_R_64F else COMPUTE_32F_FAST_TF32 if spec.tf32 \
            else COMPUTE_32F
        self.desc = lt.matmul_desc_create(compute, scale)  # alpha and beta: D's type, or float32
        self.set(lt.MatmulDescAttribute.TRANSA, int(spec.trans_a))  # CUBLAS_OP_N = 0, _T = 1
        self.set(lt.MatmulDescAttribute.TRANSB, int(spec.trans_b))
        self.set(lt.MatmulDescAttribute.EPILOGUE, spec.epilogue)
        # cuBLASLt wants the epilogue's pointers before it picks an algorithm, and may pick one
        # that relies on their alignment: plan with the first call's real pointers, and key the
        # plan on their alignment (a placeholder claiming more alignment than a bias view into
        # the flat buffer has can pick a kernel whose misaligned loads kill the CUDA context).
        if bias_ptr:
            self.set(lt.MatmulDescAttribute.BIAS_POINTER, bias_ptr)
            if scale != out:  # a bfloat16 D: the bias (or its gradient) is float32, not D's type
                self.set(lt.MatmulDescAttribute.BIAS_DATA_TYPE, scale)
        if spec.aux_ld:
            self.set(lt.MatmulDescAttribute.EPILOGUE_AUX_LD, spec.aux_ld)
            self.set(lt.MatmulDescAttribute.EPILOGUE_AUX_POINTER, aux_ptr)
        m, n, k = spec.m, spec.n, spec.k
        self.a = lt.matrix_layout_create(operands, *((k, m) if spec.trans_a else (m, k)), spec.lda)
        self.b = lt.matrix_layout_create(operands, *((n, k) if spec.trans_b else (k, n)), spec.ldb)
        self.d = lt.matrix_layout_create(out, m, n, spec.ldd)
        pref = lt.matmul_preference_create()
        for attr, value in ((lt.MatmulPreferenceAttribute.MAX_WORKSPACE_BYTES,
                             WORKSPACE_BYTES - WORKSPACE_SLACK),
                            (lt.MatmulPreferenceAttribute.MIN_ALIGNMENT_A_BYTES, spec.align_a),
                            (lt.MatmulPreferenceAttribute.MIN_ALIGNMENT_B_BYTES, spec.align_b),
                            (lt.MatmulPreferenceAttribute.MIN_ALIGNMENT_C_BYTES, spec.align_d),
                            (lt.MatmulPreferenceAttribute.MIN_ALIGNMENT_D_BYTES, spec.align_d)):
            buf = np.array([value], dtype=lt.get_matmul_preference_attribute_dtype(attr))
            lt.matmul_preference_set_attribute(pref, int(attr), buf.ctypes.data, buf.itemsize)
        self.results = np.zeros(spec.candidates, dtype=lt.matmul_heuristic_result_dtype)
        found = np.zeros(1, dtype=np.int32)
        try:
            lt.matmul_algo_get_heuristic(handle, self.desc, self.a, self.b, self.d, self.d, pref,
                                         spec.candidates, self.results.ctypes.data,
                                         found.ctypes.data)
        except lt.cuBLASLtError:  # CUBLAS_STATUS_NOT_SUPPORTED: no kernel for this epilogue
            found[0] = 0
        finally:
            lt.matmul_preference_destroy(pref)
        self.offered = int(found[0])  # by the heuristics, best guess first
        #: each candidate's split-K parts and reduction scheme (1 and 0: one pass over k)
        self.splits = [self._split(index) for index in range(self.offered)]
        if spec.candidates > 1:
            self._add_split_k(handle, spec)
        self.count = len(self.splits)  # candidates: those offered, then split-K variants
        self.supported = self.count > 0
        self.chosen = 0
        self.tuned = spec.candidates == 1  # nothing to choose between
        self.timings: dict[int, float] = {}  # algorithm index -> device ms, once tuned
        self.fallback_ms: float | None = None  # the caller's own path's time, where it was timed
        self.declined = False  # that path was faster: the caller takes it

    @property
    def algo(self) -> int:
        """The address of the chosen algorithm (its heuristic result starts with it)."""
        return self.results.ctypes.data + self.chosen * self.results.itemsize

    def _algo_attribute(self, get: Any, dtype_of: Any, index: int, attr: Any) -> int:
        """One attribute of candidate ``index``'s algorithm, a capability or its configuration."""
        buf = np.zeros(1, dtype=dtype_of(attr))
        written = np.zeros(1, dtype=np.uint64)
        get(self.results.ctypes.data + index * self.results.itemsize, int(attr), buf.ctypes.data,
            buf.itemsize, written.ctypes.data)
        return int(buf[0])

    def _config(self, index: int, attr: Any) -> int:
        return self._algo_attribute(self.lt.matmul_algo_config_get_attribute,
                                    self.lt.get_matmul_algo_config_attribute_dtype, index, attr)

    def _capability(self, index: int, attr: Any) -> int:
        return self._algo_attribute(self.lt.matmul_algo_cap_get_attribute,
                                    self.lt.get_matmul_algo_cap_attribute_dtype, index, attr)

    def _split(self, index: int) -> tuple[int, int]:
        """An offered algorithm's split-K parts and reduction scheme, as the heuristics set them
        (1 and 0 for one they did not mark successful, or that does not say)."""
        config = self.lt.MatmulAlgoConfigAttribute
        if self.results[index]["state"] != 0:
            return 1, 0
        try:
            return (max(1, self._config(index, config.SPLITK_NUM)),
                    self._config(index, config.REDUCTION_SCHEME))
        except self.lt.cuBLASLtError:
            return 1, 0

    def _add_split_k(self, handle: int, spec: Spec) -> None:
        """Append to the candidates the split-K variants of each offered algorithm that leaves
        part of the device idle (``split_counts``) and can split (its capabilities), with each
        reduction scheme it has that sums the parts in float32 or wider: in D itself (INPLACE),
        or in the workspace in the compute type (not INPLACE for a bfloat16 D, whose parts would
        be added in bfloat16). cuBLASLt checks each variant (``matmul_algo_check``); one it
        refuses, or that needs more workspace than there is, is left out."""
        lt = self.lt
        schemes = [int(lt.ReductionScheme.COMPUTE_TYPE)] + (
            [] if spec.out == BF16_BITS else [int(lt.ReductionScheme.INPLACE)])
        variants = []
        for index in range(self.offered):
            row = self.results[index]
            if row["state"] != 0 or self.splits[index][0] > 1:
                continue
            try:
                if not self._capability(index, lt.MatmulAlgoCapAttribute.SPLITK_SUPPORT):
                    continue
                mask = self._capability(index, lt.MatmulAlgoCapAttribute.REDUCTION_SCHEME_MASK)
            except lt.cuBLASLtError:
                continue
            for parts in split_counts(float(row["waves_count"]), spec.k):
                for reduction in (r for r in schemes if r & mask):
                    variant = self._variant(handle, spec, index, parts, reduction)
                    if variant is not None:
                        variants.append(variant)
                        self.splits.append((parts, reduction))
        if variants:  # one array: the chosen candidate's address is an offset into it
            self.results = np.concatenate([self.results[:self.offered], *variants])

    def _variant(self, handle: int, spec: Spec, index: int, parts: int,
                 reduction: int) -> np.ndarray | None:
        """Candidate ``index``'s heuristic result with its algorithm split ``parts`` ways over k
        (reduction scheme ``reduction``), its workspace and waves as cuBLASLt's check gives them;
        None where the check refuses it or it needs more workspace than there is."""
        lt = self.lt
        config = lt.MatmulAlgoConfigAttribute
        variant = self.results[index:index + 1].copy()  # the algorithm is a plain struct: copied
        algo = variant.ctypes.data
        check = np.zeros(1, dtype=lt.matmul_heuristic_result_dtype)
        try:
            for attr, value in ((config.SPLITK_NUM, parts), (config.REDUCTION_SCHEME, reduction)):
                buf = np.array([value], lt.get_matmul_algo_config_attribute_dtype(attr))
                lt.matmul_algo_config_set_attribute(algo, int(attr), buf.ctypes.data,
                                                    buf.itemsize)
            lt.matmul_algo_check(handle, self.desc, self.a, self.b, self.d, self.d, algo,
                                 check.ctypes.data)
        except lt.cuBLASLtError as exc:
            _log.debug("gpunn: cuBLASLt %s: algorithm %d split %d ways (reduction %d) refused: %s",
                       spec, index, parts, reduction, exc)
            return None
        if check["workspace_size"][0] > WORKSPACE_BYTES - WORKSPACE_SLACK:
            return None
        variant["workspace_size"] = check["workspace_size"]
        variant["waves_count"] = check["waves_count"]
        variant["state"] = 0
        return variant

    def set(self, attr: Any, value: int) -> None:
        buf = np.array([value], dtype=self.lt.get_matmul_desc_attribute_dtype(attr))
        self.lt.matmul_desc_set_attribute(self.desc, int(attr), buf.ctypes.data, buf.itemsize)

    def destroy(self) -> None:
        """Give the descriptor and layouts back to cuBLASLt."""
        for layout in (self.a, self.b, self.d):
            self.lt.matrix_layout_destroy(layout)
        self.lt.matmul_desc_destroy(self.desc)


class Epilogues:
    """cuBLASLt matmuls (with epilogues, or plain) on CuPy arrays; ``available`` is False without
    nvmath. ``hold`` keeps the device busy while a tuned problem's candidates are timed."""

    def __init__(self, cupy: Any, hold: Callable[[float], None] | None = None) -> None:
        self.cupy = cupy
        self.hold = hold
        self.handle: int | None = None
        #: stream pointer -> the workspace of a stream whose matmuls may run while another
        #: stream's do (``add_stream``); the other streams share ``_workspace``, in turn
        self._own: dict[int, Any] = {}
        self.problems: dict[Spec, _Problem] = {}
        try:
            from nvmath.bindings import cublasLt
        except ImportError as exc:
            self.lt = None
            self.why_not = f"nvmath-python is not importable ({exc})"
            return
        self.lt = cublasLt
        self.why_not = None

    @property
    def available(self) -> bool:
        return self.lt is not None

    def add_stream(self, stream: Any) -> None:
        """A workspace of its own for matmuls on ``stream`` (called outside any capture)."""
        if self.lt is not None and stream.ptr not in self._own:
            self._own[stream.ptr] = self.cupy.empty(WORKSPACE_BYTES, dtype=self.cupy.uint8)

    def time(self, fn: Any) -> float:
        """Device milliseconds for timing.TIMED_CALLS calls of ``fn``, queued behind the hold."""
        return timing.device_ms(self.cupy, fn, self.hold)

    def forward(self, inputs: Any, weights: Any, biases: Any, out: Any, relu: bool,
                mask: Any = None, tf32: bool = False, tune: bool = False) -> bool:
        """out = inputs @ weights + biases, then ReLU when ``relu`` (its bit mask into ``mask``
        when one is given), as one call (TF32 tensor cores for float32 when ``tf32``). For
        bfloat16 operands ``out`` may be bfloat16: the float32 result rounded as it is written.
        False, with nothing written, where cuBLASLt cannot."""
        lt = self.lt
        if mask is not None:
            epilogue = lt.Epilogue.RELU_AUX_BIAS
        else:
            epilogue = lt.Epilogue.RELU_BIAS if relu else lt.Epilogue.BIAS
        # Column-major: out^T (n_out, rows) = weights^T (n_out, n_in) @ inputs^T (n_in, rows).
        return self._matmul(epilogue, a=weights, b=inputs, d=out, k=weights.shape[0],
                            trans_a=False, trans_b=False, bias=biases, mask=mask, tf32=tf32,
                            tune=tune)

    def dinputs_relu_bgrad(self, dvalues: Any, weights: Any, out: Any, mask: Any,
                           dbiases: Any, tf32: bool = False, tune: bool = False) -> bool:
        """out = (dvalues @ weights.T) * relu'(layer below), read from that layer's ``mask``;
        dbiases = the column sums of out. For bfloat16 operands ``out`` may be bfloat16 (the
        float32 result rounded as it is written; dbiases stays float32). False, with nothing
        written, where cuBLASLt cannot."""
        # Column-major: out^T (n_in, rows) = op_T(weights^T) (n_in, n_out) @ dvalues^T.
        if weights.shape[1] == 1:  # K = 1 (a Dense(n, 1) above): nvmath calls it unsupported
            return False
        return self._matmul(self.lt.Epilogue.DRELU_BGRAD, a=weights, b=dvalues, d=out,
                            k=weights.shape[1], trans_a=True, trans_b=False, bias=dbiases,
                            mask=mask, tf32=tf32, tune=tune)

    def matmul(self, a: Any, b: Any, out: Any, trans_a: bool = False, trans_b: bool = False,
               tf32: bool = False, tune: bool = False,
               fallback: Callable[[], None] | None = None) -> bool:
        """Row-major out = op(a) @ op(b), as ``cublas.Gemm.gemm`` (bfloat16 operands give a
        float32 out), with no epilogue. False, with nothing written, where cuBLASLt cannot.
        Tuned, ``fallback`` (the same product through the caller's other path) is timed with the
        algorithms; where it was the fastest, False from then on to each call that passes one."""
        # Column-major: out^T = op(b)^T @ op(a)^T, the swap of cublas.py.
        return self._matmul(self.lt.Epilogue.DEFAULT, a=b, b=a, d=out,
                            k=a.shape[0] if trans_a else a.shape[1], trans_a=trans_b,
                            trans_b=trans_a, bias=None, mask=None, tf32=tf32, tune=tune,
                            fallback=fallback)

    def _matmul(self, epilogue: Any, a: Any, b: Any, d: Any, k: int, trans_a: bool,
                trans_b: bool, bias: Any, mask: Any, tf32: bool, tune: bool,
                fallback: Callable[[], None] | None = None) -> bool:
        operands, out = a.dtype, d.dtype
        if not _takes(a, b, d, bias, mask):
            return False
        if self.handle is None:
            self.handle = self.lt.create()
            self._workspace = self.cupy.empty(WORKSPACE_BYTES, dtype=self.cupy.uint8)
        n, m = d.shape  # row-major (rows, cols) is column-major (cols, rows)
        spec = Spec(int(epilogue), m, n, k, a.strides[0] // a.itemsize, b.strides[0] // b.itemsize,
                    d.strides[0] // d.itemsize, trans_a, trans_b,
                    8 * mask.shape[1] if mask is not None else 0,  # in elements: bits
                    operands, out, tf32 and operands == np.float32,
                    _alignment(a.data.ptr), _alignment(b.data.ptr), _alignment(d.data.ptr),
                    _alignment(bias.data.ptr) if bias is not None else 0,
                    _alignment(mask.data.ptr) if mask is not None else 0,
                    CANDIDATES if tune else 1)
        bias_ptr = bias.data.ptr if bias is not None else 0
        mask_ptr = mask.data.ptr if mask is not None else 0
        problem = self.problems.pop(spec, None)
        if problem is None:
            problem = _Problem(self.lt, self.handle, spec, bias_ptr, mask_ptr)
        self.problems[spec] = problem  # the most recently used last
        if len(self.problems) > MAX_PROBLEMS:  # many shapes over a long session: keep the recent
            self.problems.pop(next(iter(self.problems))).destroy()
        if not problem.supported:
            return False
        if bias is not None:
            problem.set(self.lt.MatmulDescAttribute.BIAS_POINTER, bias_ptr)
        if mask is not None:
            problem.set(self.lt.MatmulDescAttribute.EPILOGUE_AUX_POINTER, mask_ptr)

        scale = scale_dtype(out)

        def call() -> None:  # alpha 1 and beta 0, in the scale type the descriptor says
            stream = self.cupy.cuda.get_current_stream().ptr
            workspace = self._own.get(stream, self._workspace)
            self.lt.matmul(self.handle, problem.desc, ONE[scale].ctypes.data,
                           a.data.ptr, problem.a, b.data.ptr, problem.b,
                           ZERO[scale].ctypes.data, d.data.ptr, problem.d, d.data.ptr, problem.d,
                           problem.algo, workspace.data.ptr, WORKSPACE_BYTES, stream)

        if not problem.tuned and not self.cupy.cuda.get_current_stream().is_capturing():
            self._tune(problem, call, spec, fallback)
            if not problem.supported:
                return False
        if problem.declined and fallback is not None:  # a caller without one still gets the
            return False  # fastest algorithm (the same problem, declined by another caller)
        call()
        return True

    def _tune(self, problem: _Problem, call: Callable[[], None], spec: Spec,
              fallback: Callable[[], None] | None = None) -> None:
        """Time each algorithm the heuristics offered and keep the fastest. Each run writes the
        same outputs from the same inputs (beta is 0), so timing them changes nothing the final
        call does not write again. One that fails, or that the heuristics marked with a status
        other than success, is passed over; with none left, the problem is unsupported and the
        backend takes its other path. ``fallback``, timed too, makes the problem declined where
        it beats every algorithm."""
        times = problem.timings
        for index in range(problem.count):
            if problem.results["state"][index] != 0:  # not CUBLAS_STATUS_SUCCESS: not offered
                continue
            problem.chosen = index
            try:
                times[index] = self.time(call)
            except self.lt.cuBLASLtError as exc:
                _log.debug("gpunn: cuBLASLt algorithm %d of %s failed: %s", index, spec, exc)
        problem.tuned = True
        if not times:
            problem.supported = False
            return
        problem.chosen = min(times, key=times.__getitem__)  # the first of equals: the heuristics'
        if fallback is not None:
            problem.fallback_ms = self.time(fallback)
            problem.declined = problem.fallback_ms < times[problem.chosen]
        _log.debug("gpunn: cuBLASLt %s: algorithm %d of %d, %.4f ms against %.4f for the "
                   "heuristics' first and %s for the caller's own path%s", spec, problem.chosen,
                   problem.count, times[problem.chosen], times.get(0, math.nan),
                   problem.fallback_ms, " (kept)" if problem.declined else "")


def _takes(a: Any, b: Any, d: Any, bias: Any, mask: Any) -> bool:
    """Whether cuBLASLt takes these operands as ``Epilogues`` calls it: A and B of one type,
    float32 or float64 as D is, or bfloat16 bits for a float32 D (or a bfloat16 one where a bias
    or its gradient comes with it); rows contiguous; the bias and mask, where there are,
    contiguous, of ``scale_dtype`` (the mask its shape) and 16-byte aligned."""
    out = d.dtype
    if a.dtype != b.dtype or not all(blas_ready(x) for x in (a, b, d)):
        return False
    if a.dtype == BF16_BITS:
        if out != np.float32 and not (out == BF16_BITS and bias is not None):
            return False
    elif out not in ONE or a.dtype != out:
        return False
    if bias is not None and (bias.dtype != scale_dtype(out) or not bias.flags.c_contiguous
                             or _alignment(bias.data.ptr) < 16):
        return False
    return mask is None or (mask.flags.c_contiguous and mask.shape == relu_mask_shape(*d.shape)
                            and _alignment(mask.data.ptr) >= 16)
