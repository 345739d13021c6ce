"""bfloat16 as gpunn keeps it: a float32 with the lower 16 bits of its mantissa cut off (8 bits of
precision, float32's full exponent range), stored as those 16 bits in a uint16 array. NumPy has no
bfloat16 type and CuPy's is recent and optional, but cuBLAS reads the bits as CUDA_R_16BF
whatever the array calls them, and our kernels write them. These are the reference conversions,
over any array module ``xp``; kernels.cu's ``float_to_bf16`` is tested against them (and both
against ml_dtypes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The dtype of arrays holding bfloat16 values (their bits).
BF16_BITS = np.dtype(np.uint16)


def round_to_bf16(xp: Any, x: Any, out: Any) -> Any:
    """out = float32 ``x`` rounded to bfloat16, to nearest, ties to even (a carry out of the lower
    half rounds up; overflow gives infinity). A NaN stays a quiet NaN of its sign."""
    bits = xp.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # uint32 arithmetic: only NaNs can wrap around, and they are replaced below.
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = (bits >> np.uint32(16)) | np.uint32(0x0040)
    out[...] = xp.where(nan, quiet, rounded).astype(np.uint16)
    return out


def widen(xp: Any, bits: Any) -> Any:
    """The float32 values of bfloat16 ``bits`` (exact: a bfloat16 is a float32 with zeros below)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
