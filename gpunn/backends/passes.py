"""The NumPy backend's element-wise passes over large arrays, compiled by numba: each op one pass
over memory where NumPy makes two (bias and ReLU) to thirteen (Adam).

Why: on the CPU a large network's step is its GEMMs plus element-wise work that streams whole
arrays through memory, once per NumPy call. Measured on the medium network (784-1024-1024-10,
batch 1024, 2-core Xeon): bias + ReLU 0.95 -> 0.35 ms, the ReLU gradient 0.94 -> 0.60 ms, the SGD
update of 1.86M parameters 1.33 -> 0.58 ms; the whole step 33.0 -> 31.1 ms (medians of ten runs of
five steps each way, alternating).

Each function does the same operations in the same order as base.py's reference ops, in the
array's dtype, with no fast-math (no fused multiply-adds, no reassociation), so the results are
the same bits, NaN, infinity, signed zeros and denormals included; tests/backends/test_passes.py
ties them. (But for which NaN an add of two NaNs returns: IEEE 754 leaves that to the
implementation, and NumPy's own loops differ between versions; it is a NaN either way.)
One thread: the GEMMs already use every core, and a second thread pool fights BLAS's for them
(measured: the same passes on two threads made the medium step 33 -> 58 ms).

numba is optional; without it, and for arrays under ``COMPILED_FROM`` elements (where a compiled
call saves little), the NumPy backend makes its NumPy calls.
Each pass is compiled on its first call, once per dtype, and numba is imported then
(numba_import.py).

The passes start only once a process has taken ``NUMPY_FIRST`` elements through NumPy's calls
for ops they would take (a ski rental: rent until the rent paid equals the price, then buy).
Their first use in a process costs about 0.55 s (2-core AMD EPYC: importing numba, starting its
compiler, compiling the pass; a fresh process's first predict of 10,000 rows through
784-256-128-10 took 0.59-0.63 s with them, 0.04-0.05 s without, and its second 0.03 s either
way), and they save 0.27 (SGD) to 1.5 (Adam) ns an element, about 0.5 typically (medium's
arrays, the same machine): they pay back only over about a billion elements. So a one-shot
predict or evaluate, or a short fit, never compiles, and a long fit (medium: after about 170
steps) loses at most about what compiling costs. The numbers are the same bits either way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import numba_import

#: Arrays this large or larger take the compiled passes. Once numba is started, a pass beats
#: NumPy's calls from about a thousand elements (2-core AMD EPYC, float32; NumPy's against the
#: pass, in us: bias + ReLU 4.0 against 0.85 at 4,096 elements, the ReLU gradient 3.1 against
#: 1.5, SGD 2.1 against 1.3, Adam 13.2 against 4.4; at 1,024, SGD 1.5 against 1.1): the
#: threshold keeps to where every pass is clearly ahead. (When passes compiled at their first
#: call, it was 65,536, so that a small network never paid for a compile; NUMPY_FIRST does that.)
COMPILED_FROM = 1 << 12
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def why_not() -> str | None:
    """None where the passes can be compiled (numba imports: asking imports it), else why not."""
    return numba_import.why_not()


#: Elements a process takes through NumPy's calls, for ops the passes would take, before the
#: passes start (the module's docstring says why).
NUMPY_FIRST = 1_000_000_000


class NumpyFirst:
    """How many more elements go through NumPy's calls before the passes start."""

    def __init__(self, elements: int) -> None:
        self.remaining = elements

    def over(self, elements: int) -> bool:
        """Whether NumPy's calls are done with; where not, an op over ``elements`` elements is
        counted off (it goes through them)."""
        if self.remaining <= 0:
            return True
        self.remaining -= elements
        return False


#: This process's count.
numpy_first = NumpyFirst(NUMPY_FIRST)


def takes(*arrays: Any) -> bool:
    """Whether the compiled passes take these arrays: they are large, C-ordered and all float32
    or all float64, ``numpy_first`` is over (these are counted off where it is not), and numba
    is here (asked last: the first arrays the passes take import it)."""
    first = arrays[0]
    return (first.size >= COMPILED_FROM and first.dtype in FLOATS
            and all(a.flags.c_contiguous and a.dtype == first.dtype for a in arrays)
            and numpy_first.over(first.size) and why_not() is None)


def start_now() -> None:
    """Let the passes take arrays from now on in this process, whatever has been through NumPy's
    calls (the bench, which times the steady state of a long run)."""
    numpy_first.remaining = 0


def bias_relu(z, biases):
    """z = max(z + biases, 0) in place, as np.add then np.maximum(z, 0): a NaN stays (its sign
    too), -0 becomes +0."""
    rows, cols = z.shape
    zero = z.dtype.type(0)
    for i in range(rows):
        for j in range(cols):
            a = z[i, j] + biases[j]
            z[i, j] = a if not a <= zero else zero


def relu_backward(dvalues, output, out):
    """out = dvalues * (output > 0), as NumPy multiplies by the comparison's 1 or 0 (so a
    negative gradient blocked is -0, and a NaN stays NaN)."""
    one, zero = dvalues.dtype.type(1), dvalues.dtype.type(0)
    for q in range(dvalues.size):
        out[q] = dvalues[q] * (one if output[q] > zero else zero)


def relu_backward_in_place(dvalues, output):
    """relu_backward with out = dvalues: one array written, which the compiler can check does
    not overlap the one read and so vectorise."""
    one, zero = dvalues.dtype.type(1), dvalues.dtype.type(0)
    for q in range(dvalues.size):
        dvalues[q] = dvalues[q] * (one if output[q] > zero else zero)


def sgd(params, grads, minus_lr):
    """base.py's sgd_update without momentum: scratch = g * -lr; w = w + scratch."""
    for q in range(params.size):
        params[q] = params[q] + grads[q] * minus_lr


def sgd_momentum(params, grads, momentums, momentum, lr):
    """u = u * momentum; scratch = g * lr; u = u - scratch; w = w + u."""
    for q in range(params.size):
        u = momentums[q] * momentum - grads[q] * lr
        momentums[q] = u
        params[q] = params[q] + u


def cache_step(params, grads, cache, rho, rest, epsilon, minus_lr, adagrad):
    """Adagrad (cache = cache + g * g) or RMSprop (cache = cache * rho + g * g * rest), then
    base.py's _scaled_step: w = w + g / (sqrt(cache) + eps) * -lr."""
    for q in range(params.size):
        g = grads[q]
        c = cache[q] + g * g if adagrad else cache[q] * rho + g * g * rest
        cache[q] = c
        params[q] = params[q] + g / (math.sqrt(c) + epsilon) * minus_lr


def adam(params, grads, momentums, cache, beta_1, rest_1, beta_2, rest_2, correct_2, epsilon,
         minus_lr_corrected):
    """base.py's adam_update: m = m*b1 + g*(1-b1); v = v*b2 + g*g*(1-b2);
    w = w + m / (sqrt(v * correct_2) + eps) * (-lr * correct_1)."""
    for q in range(params.size):
        g = grads[q]
        m = momentums[q] * beta_1 + g * rest_1
        v = cache[q] * beta_2 + g * g * rest_2
        momentums[q] = m
        cache[q] = v
        params[q] = params[q] + m / (math.sqrt(v * correct_2) + epsilon) * minus_lr_corrected


def _compile(function: Any) -> Any:
    """njit with error_model numpy (x / 0 is inf, as in NumPy) and the GIL let go."""
    return numba_import.numba().njit(error_model="numpy", nogil=True)(function)


# Compiled on first call, once per dtype.
(bias_relu, relu_backward, relu_backward_in_place, sgd, sgd_momentum, cache_step,
 adam) = (numba_import.OnFirstCall(f, _compile)
          for f in (bias_relu, relu_backward, relu_backward_in_place, sgd, sgd_momentum,
                    cache_step, adam))
