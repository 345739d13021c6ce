"""GEMMs for the CuPy backend through cuBLAS with a handle of our own.

CuPy refuses to call cuBLAS while a stream is being captured (its setStream raises
NotImplementedError), so a training step with CuPy's matmul cannot become a CUDA graph. Calling
cuBLAS through nvmath-python's bindings with our own handle captures fine. The handle follows the
current stream; after each stream change the workspace is set again, because cublasSetStream
resets it (a graph must not use cuBLAS's own workspace allocations). A stream whose GEMMs may run
at the same time as the others' (the CuPy backend's side stream, ``add_stream``) has a handle and
a workspace of its own, bound once, outside any capture.

Without nvmath-python the same calls go through ``cupy.matmul(..., out=)``: correct, eager only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..bf16 import BF16_BITS

_log = logging.getLogger("gpunn")

WORKSPACE_BYTES = 32 << 20  # cuBLAS asks for up to 32 MiB on Hopper

# alpha = 1 and beta = 0 on the host, per element type (the default pointer mode reads the host);
# cuBLASLt's calls in cublaslt.py take the same.
ONE = {np.dtype(np.float32): np.ones(1, np.float32), np.dtype(np.float64): np.ones(1)}
ZERO = {np.dtype(np.float32): np.zeros(1, np.float32), np.dtype(np.float64): np.zeros(1)}

# cudaDataType, cublasComputeType_t and cublasGemmAlgo_t values (library_types.h, cublas_api.h)
# for bf16 GEMMs: bfloat16 A and B, float32 C, float32 accumulation, cuBLAS's own choice of kernel.
CUDA_R_32F, CUDA_R_16BF = 0, 14
COMPUTE_32F = 68
GEMM_DEFAULT = -1


class Gemm:
    """Row-major ``out = op(a) @ op(b)`` on CuPy arrays (float32 or float64)."""

    def __init__(self, cupy: Any) -> None:
        self.cupy = cupy
        self.handle: int | None = None
        self.tf32 = False
        self._stream: int | None = None
        #: stream pointer -> (handle, workspace) of a stream with its own (``add_stream``)
        self._own: dict[int, tuple[int, Any]] = {}
        self._said_fallback = False
        try:
            from nvmath.bindings import cublas
        except ImportError as exc:
            self.cublas = None
            self.why_not = f"nvmath-python is not importable ({exc})"
            return
        self.cublas = cublas
        self.why_not = None

    @property
    def why_not_bf16(self) -> str | None:
        """Why GEMMs on bfloat16 operands cannot run (CuPy's matmul has no bfloat16), or None."""
        return self.why_not

    @property
    def capturable(self) -> bool:
        """Whether GEMMs may run inside a CUDA-graph capture."""
        return self.cublas is not None

    def set_tf32(self, enabled: bool) -> None:
        """Tensor-core TF32 for float32 GEMMs (compute capability 8.0 and newer). Models share
        the handle and each GEMM says which it wants: only a change reaches cuBLAS."""
        if bool(enabled) == self.tf32:
            return
        self.tf32 = bool(enabled)
        for handle in [self.handle, *(own for own, _ in self._own.values())]:
            if handle is not None:  # the handles made so far; one made later gets it then
                self._set_math_mode(handle)

    def _set_math_mode(self, handle: int) -> None:
        mode = self.cublas.Math.TF32_TENSOR_OP_MATH if self.tf32 else self.cublas.Math.DEFAULT_MATH
        self.cublas.set_math_mode(handle, int(mode))

    def add_stream(self, stream: Any) -> None:
        """A handle and a workspace of their own for GEMMs on ``stream``, which may run while
        another stream's do (the others share one workspace, their work being in one order).
        Called outside any capture."""
        if self.cublas is None or stream.ptr in self._own:
            return
        handle, workspace = self._new_handle()
        self._bind(handle, stream.ptr, workspace)
        self._own[stream.ptr] = handle, workspace

    def _new_handle(self) -> tuple[int, Any]:
        """A handle in the current math mode, and a workspace for it."""
        handle = self.cublas.create()
        self._set_math_mode(handle)
        return handle, self.cupy.empty(WORKSPACE_BYTES, dtype=self.cupy.uint8)

    def _bind(self, handle: int, stream: int, workspace: Any) -> None:
        self.cublas.set_stream(handle, stream)
        # set_stream resets the workspace, so give ours again.
        self.cublas.set_workspace(handle, workspace.data.ptr, WORKSPACE_BYTES)

    def _handle(self) -> int:
        """The handle for GEMMs on the current stream: its own, or the shared one pointed at it."""
        own = self._own.get(self.cupy.cuda.get_current_stream().ptr)
        if own is not None:
            return own[0]
        self.bind_stream()
        return self.handle

    def bind_stream(self) -> None:
        """Point our handle at the current stream (done before a capture begins, too)."""
        stream = self.cupy.cuda.get_current_stream().ptr
        if self.handle is None:
            self.handle, self._workspace = self._new_handle()
        if stream != self._stream:
            self._bind(self.handle, stream, self._workspace)
            self._stream = stream

    def gemm(self, a: Any, b: Any, out: Any, trans_a: bool, trans_b: bool,
             tf32: bool = False) -> Any:
        """``tf32``: tensor-core TF32 for float32 (the model's precision). bfloat16 operands (both,
        as BF16_BITS arrays) give a float32 ``out`` through cublasGemmEx."""
        if a.dtype == BF16_BITS or b.dtype == BF16_BITS:
            return self._gemm_bf16(a, b, out, trans_a, trans_b)
        if self.cublas is None or not blas_ready(out) or out.dtype not in ONE \
                or a.dtype != out.dtype or b.dtype != out.dtype:
            # mixed dtypes or a strided output (ad-hoc book-style use): CuPy casts and copies
            return self._fallback(a, b, out, trans_a, trans_b)
        a = a if blas_ready(a) else self.cupy.ascontiguousarray(a)
        b = b if blas_ready(b) else self.cupy.ascontiguousarray(b)
        # A row-major (r, c) array with row stride ld is, to column-major cuBLAS, its transpose
        # (c, r) with leading dimension ld. So out^T = op(b)^T @ op(a)^T: swap a and b, keep the
        # transpose flags, and m, n become out's columns and rows.
        handle = self._handle()
        self.set_tf32(tf32)
        n_rows, m_cols = out.shape
        k = a.shape[0] if trans_a else a.shape[1]
        itemsize = out.itemsize
        gemm = self.cublas.sgemm if out.dtype == np.float32 else self.cublas.dgemm
        op = {False: int(self.cublas.Operation.N), True: int(self.cublas.Operation.T)}
        gemm(handle, op[trans_b], op[trans_a], m_cols, n_rows, k,
             ONE[out.dtype].ctypes.data, b.data.ptr, b.strides[0] // itemsize,
             a.data.ptr, a.strides[0] // itemsize,
             ZERO[out.dtype].ctypes.data, out.data.ptr, out.strides[0] // itemsize)
        return out

    def _gemm_bf16(self, a: Any, b: Any, out: Any, trans_a: bool, trans_b: bool) -> Any:
        if self.cublas is None:
            raise RuntimeError(f"bf16 GEMMs need cuBLAS through nvmath-python: {self.why_not}")
        if not (a.dtype == b.dtype == BF16_BITS and out.dtype == np.float32
                and blas_ready(a) and blas_ready(b) and blas_ready(out)):
            raise ValueError(f"a bf16 GEMM takes two bf16 operands and a float32 output, each with "
                             f"contiguous rows; got {a.dtype} {a.strides}, {b.dtype} {b.strides} -> "
                             f"{out.dtype} {out.strides}")
        handle = self._handle()
        n_rows, m_cols = out.shape  # the row-major to column-major swap of ``gemm``
        k = a.shape[0] if trans_a else a.shape[1]
        op = {False: int(self.cublas.Operation.N), True: int(self.cublas.Operation.T)}
        f32 = np.dtype(np.float32)
        self.cublas.gemm_ex(handle, op[trans_b], op[trans_a], m_cols, n_rows, k,
                            ONE[f32].ctypes.data, b.data.ptr, CUDA_R_16BF, b.strides[0] // 2,
                            a.data.ptr, CUDA_R_16BF, a.strides[0] // 2,
                            ZERO[f32].ctypes.data, out.data.ptr, CUDA_R_32F, out.strides[0] // 4,
                            COMPUTE_32F, GEMM_DEFAULT)
        return out

    def _fallback(self, a: Any, b: Any, out: Any, trans_a: bool, trans_b: bool) -> Any:
        if self.cublas is not None:
            return self.cupy.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)
        if not self._said_fallback:
            self._said_fallback = True
            _log.info("gpunn: %s; GEMMs go through cupy.matmul, so training steps run eagerly "
                      "(no CUDA graphs). pip install nvmath-python to enable them.", self.why_not)
        return self.cupy.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)


def blas_ready(arr: Any) -> bool:
    """2-D with each row contiguous: what cuBLAS can read through a leading dimension."""
    return arr.ndim == 2 and arr.strides[1] == arr.itemsize and arr.strides[0] % arr.itemsize == 0 \
        and arr.strides[0] >= arr.shape[1] * arr.itemsize
