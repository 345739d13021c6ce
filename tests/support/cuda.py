"""Stand-ins for CuPy arrays and column-major views, for checking the cuBLAS and cuBLASLt wrappers
on the CPU (tests/backends/cuda/test_cublas.py, test_cublaslt.py)."""

from __future__ import annotations

import ctypes
import types

import numpy as np
from numpy.lib.stride_tricks import as_strided


class DeviceLike:
    """A NumPy array dressed as a CuPy one: .data.ptr, shape, strides, dtype."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.data = types.SimpleNamespace(ptr=arr.ctypes.data)
        self.shape, self.strides, self.dtype = arr.shape, arr.strides, arr.dtype
        self.itemsize, self.ndim = arr.itemsize, arr.ndim


def column_major(ptr: int, rows: int, cols: int, ld: int, dtype) -> np.ndarray:
    """The (rows, cols) column-major matrix with leading dimension ld at address ptr."""
    itemsize = np.dtype(dtype).itemsize
    span = (cols - 1) * ld + rows
    buf = (ctypes.c_char * (span * itemsize)).from_address(ptr)
    flat = np.frombuffer(buf, dtype=dtype, count=span)
    return as_strided(flat, shape=(rows, cols), strides=(itemsize, ld * itemsize))
