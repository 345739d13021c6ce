"""exp and log in float32 that numba can vectorise: the softmax of the CPU one-kernel trainer
(jit.py) calls them once per sample and class.

Why: numba turns ``math.exp`` and ``math.log`` into calls of the C library's ``expf`` and
``logf``, one value at a time (numba vectorises them only with Intel's SVML, which the pip
wheels of llvmlite are not built for). A call in a loop keeps the whole loop scalar, so the
softmax took about a third of the book's run. Written as arithmetic on the value and its bits,
as here, the compiler inlines them and runs the loop on vector registers. Measured on a 2-core
AMD EPYC (AVX-512), the softmax's loop over the book's 300 samples compiled as the trainer is
(jit.ERROR_MODEL): 3.0 us with the C library's exp and log, 1.3 us with these.

The polynomials are Cephes's ``expf`` and ``logf`` (Stephen L. Moshier), and so are the ways of
reducing the argument. Checked against float64 over the ranges the trainer uses
(tests/backends/test_jit_math.py): exp within 1 ulp of the exact value, log within 1 ulp.

Only for the values the trainer hands them, which is what their names say: ``exp_nonpositive``
takes x <= 0 (a logit less the row's largest), and ``log_positive`` a positive normal number
(a probability clipped to [1e-7, 1 - 1e-7]). Both hand NaN back as NaN, so a diverging run is
still caught. float64 values go to ``math.exp`` and ``math.log`` as before: there the scalar
calls cost the same, and the float64 trainer is the one tests compare with NumPy to 1e-12.

Called from Python (not compiled), each is ``math.exp`` or ``math.log``: the reference. numba
compiles them so only after ``register()``, which jit.njit calls, and which imports numba.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from . import numba_import

_F = np.float32
#: The least float32 whose exp is a normal float32 (at least 2^-126); below it exp gives 0, as
#: the trainer's flushed denormals would be (denormals.py).
EXP_LOWEST = _F(-87.33654)
_LOG2_E = _F(1.44269504088896341)
#: ln 2 in two parts (Cody and Waite): x - n ln 2 loses no digits to rounding n ln 2.
_LN2_HIGH, _LN2_LOW = _F(0.693359375), _F(-2.12194440e-4)
_EXP_TERMS = tuple(_F(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                   4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_LOG_TERMS = tuple(_F(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1,
                                   -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
                                   2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1))
_SQRT_HALF = _F(0.707106781186547524)
_ZERO, _HALF, _ONE = _F(0.0), _F(0.5), _F(1.0)
#: float32's bits: the exponent's bias and place, the sign and fraction, and 0.5's exponent.
_BIAS, _FRACTION_BITS = 127, 23
_SIGN_AND_FRACTION, _HALFS_EXPONENT = np.int32(-0x7F800001), np.int32(0x3F000000)


def exp_nonpositive(x: float) -> float:
    """e^x for x <= 0 (or NaN)."""
    return math.exp(x)


def log_positive(x: float) -> float:
    """ln x for a positive normal x (or NaN)."""
    return math.log(x)


def _exp32(x):  # type: ignore[no-untyped-def]
    """exp_nonpositive of a float32, as numba compiles it (after ``register``)."""
    # A NaN fails the comparison and goes through as EXP_LOWEST, for which all below is
    # defined; it is put back at the end (an integer made from a NaN would be undefined).
    normal = x >= EXP_LOWEST
    xs = x if normal else EXP_LOWEST
    # x = n ln 2 + r, n the nearest integer to x / ln 2 (n <= 0: truncating x / ln 2 - 1/2
    # rounds it), |r| <= ln 2 / 2; then e^x = 2^n e^r.
    n = np.int32(xs * _LOG2_E - _HALF)
    nf = _F(n)
    r = (xs - nf * _LN2_HIGH) - nf * _LN2_LOW
    p = _EXP_TERMS[0]
    for c in _EXP_TERMS[1:]:
        p = p * r + c
    e_r = p * (r * r) + r + _ONE
    two_to_n = _from_bits(np.int32((n + _BIAS) << _FRACTION_BITS))  # n >= -126: normal
    if normal:
        return e_r * two_to_n
    return x if x != x else _ZERO


def _log32(x):  # type: ignore[no-untyped-def]
    """log_positive of a float32, as numba compiles it (after ``register``)."""
    # x = m 2^e with m in [1/2, 1) from its bits; then with m in [sqrt(1/2), sqrt(2)) (m doubled
    # and e less one below sqrt(1/2)), ln x = e ln 2 + ln(1 + f), f = m - 1.
    bits = _bits(x)
    e = ((bits >> _FRACTION_BITS) & 0xFF) - (_BIAS - 1)
    m = _from_bits((bits & _SIGN_AND_FRACTION) | _HALFS_EXPONENT)
    below = m < _SQRT_HALF
    e = e - 1 if below else e
    f = (m + m - _ONE) if below else (m - _ONE)
    ef = _F(e)
    ff = f * f
    p = _LOG_TERMS[0]
    for c in _LOG_TERMS[1:]:
        p = p * f + c
    ln = ((f * ff * p + ef * _LN2_LOW) - _HALF * ff + f) + ef * _LN2_HIGH
    return ln if x == x else x


#: A float32's bits as an int32, and the float32 with given bits: numba intrinsics that
#: ``register`` makes (they need numba), for _exp32 and _log32.
_bits: Any = None
_from_bits: Any = None


@functools.cache
def register() -> None:
    """Make numba compile calls of exp_nonpositive and log_positive on float32 as _exp32 and
    _log32 (float64: math's), in code compiled after this; jit.njit calls it first. The first
    call imports numba (numba_import.py)."""
    global _bits, _from_bits
    numba_import.numba()
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload

    @intrinsic
    def bits(typingctx, x):  # type: ignore[no-untyped-def]
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.bitcast(args[0], ir.IntType(32))
        return types.int32(types.float32), codegen

    @intrinsic
    def from_bits(typingctx, bits):  # type: ignore[no-untyped-def]
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.int32), codegen

    _bits, _from_bits = bits, from_bits

    @overload(exp_nonpositive, jit_options={"fastmath": False})
    def exp(x):  # type: ignore[no-untyped-def]
        return _exp32 if x == types.float32 else lambda x: math.exp(x)

    @overload(log_positive, jit_options={"fastmath": False})
    def log(x):  # type: ignore[no-untyped-def]
        return _log32 if x == types.float32 else lambda x: math.log(x)
