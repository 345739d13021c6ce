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

Each distinct problem (shape, leading dimensions, alignment, precision, epilogue) gets one
descriptor and one algorithm, asked of cuBLASLt's heuristics once. Where cuBLASLt has none (an
epilogue it does not offer for that case, float64 on some versions), ``forward`` and
``dinputs_relu_bgrad`` return False and write nothing, and the backend takes its separate path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .cublas import ONE, ZERO, blas_ready

WORKSPACE_BYTES = 32 << 20
#: What the heuristics may plan to use of the workspace: some epilogues need room beyond the
#: algorithm's own (nvmath leaves the same 256 bytes).
WORKSPACE_SLACK = 256
#: Planned problems kept (least recently used first out); a model uses a handful.
MAX_PROBLEMS = 256

# cudaDataType and cublasComputeType_t values (library_types.h, cublas_api.h).
CUDA_R_32F, CUDA_R_64F = 0, 1
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70


def relu_mask_shape(rows: int, cols: int) -> tuple[int, int]:
    """The uint8 array holding the ReLU bit mask of a row-major (rows, cols) output.

    cuBLASLt keeps one bit per element of its column-major (cols, rows) result, each column padded
    to a multiple of 128 bits: (rows, bytes per column) in our row-major terms."""
    return rows, 16 * math.ceil(math.ceil(cols / 8) / 16)


def _alignment(ptr: int) -> int:
    """The largest power of two (at most 256) that divides the address."""
    return min(256, ptr & -ptr) if ptr else 256


class _Problem:
    """One cuBLASLt matmul set up: descriptor, layouts and the algorithm its heuristics chose."""

    def __init__(self, lt: Any, handle: int, key: tuple, bias_ptr: int, aux_ptr: int) -> None:
        (epilogue, m, n, k, lda, ldb, ldd, trans_a, aux_ld, dtype, tf32,
         align_a, align_b, align_d, _, _) = key
        self.lt = lt
        data_type = CUDA_R_32F if dtype == np.float32 else CUDA_R_64F
        compute = COMPUTE_64F if dtype == np.float64 else COMPUTE_32F_FAST_TF32 if tf32 \
            else COMPUTE_32F
        self.desc = lt.matmul_desc_create(compute, data_type)
        self.set(lt.MatmulDescAttribute.TRANSA, int(trans_a))  # CUBLAS_OP_N = 0, _T = 1
        self.set(lt.MatmulDescAttribute.TRANSB, 0)
        self.set(lt.MatmulDescAttribute.EPILOGUE, int(epilogue))
        # cuBLASLt wants the epilogue's pointers before it picks an algorithm, and may pick one
        # that relies on their alignment: plan with the first call's real pointers, and key the
        # plan on their alignment (a placeholder claiming more alignment than a bias view into
        # the flat buffer has can pick a kernel whose misaligned loads kill the CUDA context).
        self.set(lt.MatmulDescAttribute.BIAS_POINTER, bias_ptr)
        if aux_ld:
            self.set(lt.MatmulDescAttribute.EPILOGUE_AUX_LD, aux_ld)
            self.set(lt.MatmulDescAttribute.EPILOGUE_AUX_POINTER, aux_ptr)
        rows_a, cols_a = (k, m) if trans_a else (m, k)
        self.a = lt.matrix_layout_create(data_type, rows_a, cols_a, lda)
        self.b = lt.matrix_layout_create(data_type, k, n, ldb)
        self.d = lt.matrix_layout_create(data_type, m, n, ldd)
        pref = lt.matmul_preference_create()
        for attr, value in ((lt.MatmulPreferenceAttribute.MAX_WORKSPACE_BYTES,
                             WORKSPACE_BYTES - WORKSPACE_SLACK),
                            (lt.MatmulPreferenceAttribute.MIN_ALIGNMENT_A_BYTES, align_a),
                            (lt.MatmulPreferenceAttribute.MIN_ALIGNMENT_B_BYTES, align_b),
                            (lt.MatmulPreferenceAttribute.MIN_ALIGNMENT_C_BYTES, align_d),
                            (lt.MatmulPreferenceAttribute.MIN_ALIGNMENT_D_BYTES, align_d)):
            buf = np.array([value], dtype=lt.get_matmul_preference_attribute_dtype(attr))
            lt.matmul_preference_set_attribute(pref, int(attr), buf.ctypes.data, buf.itemsize)
        self.result = np.zeros(1, dtype=lt.matmul_heuristic_result_dtype)
        found = np.zeros(1, dtype=np.int32)
        try:
            lt.matmul_algo_get_heuristic(handle, self.desc, self.a, self.b, self.d, self.d, pref,
                                         1, self.result.ctypes.data, found.ctypes.data)
        except lt.cuBLASLtError:  # CUBLAS_STATUS_NOT_SUPPORTED: no kernel for this epilogue
            found[0] = 0
        finally:
            lt.matmul_preference_destroy(pref)
        self.supported = bool(found[0])

    def set(self, attr: Any, value: int) -> None:
        buf = np.array([value], dtype=self.lt.get_matmul_desc_attribute_dtype(attr))
        self.lt.matmul_desc_set_attribute(self.desc, int(attr), buf.ctypes.data, buf.itemsize)

    def destroy(self) -> None:
        """Give the descriptor and layouts back to cuBLASLt."""
        for layout in (self.a, self.b, self.d):
            self.lt.matrix_layout_destroy(layout)
        self.lt.matmul_desc_destroy(self.desc)


class Epilogues:
    """cuBLASLt matmuls with epilogues, on CuPy arrays; ``available`` is False without nvmath."""

    def __init__(self, cupy: Any) -> None:
        self.cupy = cupy
        self.handle: int | None = None
        self.problems: dict[tuple, _Problem] = {}
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

    def forward(self, inputs: Any, weights: Any, biases: Any, out: Any, relu: bool,
                mask: Any = None, tf32: bool = False) -> bool:
        """out = inputs @ weights + biases, then ReLU when ``relu`` (its bit mask into ``mask``
        when one is given), as one call (TF32 tensor cores for float32 when ``tf32``). False,
        with nothing written, where cuBLASLt cannot."""
        lt = self.lt
        if mask is not None:
            epilogue = lt.Epilogue.RELU_AUX_BIAS
        else:
            epilogue = lt.Epilogue.RELU_BIAS if relu else lt.Epilogue.BIAS
        # Column-major: out^T (n_out, rows) = weights^T (n_out, n_in) @ inputs^T (n_in, rows).
        rows, n_out = out.shape
        return self._matmul(epilogue, a=weights, b=inputs, d=out, m=n_out, n=rows,
                            k=weights.shape[0], trans_a=False, bias=biases, mask=mask, tf32=tf32)

    def dinputs_relu_bgrad(self, dvalues: Any, weights: Any, out: Any, mask: Any,
                           dbiases: Any, tf32: bool = False) -> bool:
        """out = (dvalues @ weights.T) * relu'(layer below), read from that layer's ``mask``;
        dbiases = the column sums of out. False, with nothing written, where cuBLASLt cannot."""
        # Column-major: out^T (n_in, rows) = op_T(weights^T) (n_in, n_out) @ dvalues^T.
        rows, n_in = out.shape
        if weights.shape[1] == 1:  # K = 1 (a Dense(n, 1) above): nvmath calls it unsupported
            return False
        return self._matmul(self.lt.Epilogue.DRELU_BGRAD, a=weights, b=dvalues, d=out, m=n_in,
                            n=rows, k=weights.shape[1], trans_a=True, bias=dbiases, mask=mask,
                            tf32=tf32)

    def _matmul(self, epilogue: Any, a: Any, b: Any, d: Any, m: int, n: int, k: int,
                trans_a: bool, bias: Any, mask: Any, tf32: bool) -> bool:
        dtype = d.dtype
        if dtype not in ONE or a.dtype != dtype or b.dtype != dtype \
                or bias.dtype != dtype or not all(blas_ready(x) for x in (a, b, d)) \
                or not bias.flags.c_contiguous or _alignment(bias.data.ptr) < 16 \
                or (mask is not None and (not mask.flags.c_contiguous
                                          or mask.shape != relu_mask_shape(*d.shape)
                                          or _alignment(mask.data.ptr) < 16)):
            return False
        if self.handle is None:
            self.handle = self.lt.create()
            self._workspace = self.cupy.empty(WORKSPACE_BYTES, dtype=self.cupy.uint8)
        item = d.itemsize
        aux_ld = 8 * mask.shape[1] if mask is not None else 0  # in elements: bits
        key = (int(epilogue), m, n, k, a.strides[0] // item, b.strides[0] // item,
               d.strides[0] // item, trans_a, aux_ld, dtype, tf32 and dtype == np.float32,
               _alignment(a.data.ptr), _alignment(b.data.ptr), _alignment(d.data.ptr),
               _alignment(bias.data.ptr), _alignment(mask.data.ptr) if mask is not None else 0)
        problem = self.problems.pop(key, None)
        if problem is None:
            problem = _Problem(self.lt, self.handle, key, bias.data.ptr,
                               mask.data.ptr if mask is not None else 0)
        self.problems[key] = problem  # the most recently used last
        if len(self.problems) > MAX_PROBLEMS:  # many shapes over a long session: keep the recent
            self.problems.pop(next(iter(self.problems))).destroy()
        if not problem.supported:
            return False
        problem.set(self.lt.MatmulDescAttribute.BIAS_POINTER, bias.data.ptr)
        if mask is not None:
            problem.set(self.lt.MatmulDescAttribute.EPILOGUE_AUX_POINTER, mask.data.ptr)
        self.lt.matmul(self.handle, problem.desc, ONE[dtype].ctypes.data,
                       a.data.ptr, problem.a, b.data.ptr, problem.b,
                       ZERO[dtype].ctypes.data, d.data.ptr, problem.d, d.data.ptr, problem.d,
                       problem.result.ctypes.data, self._workspace.data.ptr, WORKSPACE_BYTES,
                       self.cupy.cuda.get_current_stream().ptr)
        return True

