"""The CPU backend: NumPy, with overrides only where they measured faster than ``base.py``.

Three things make small NumPy ops slow: reductions along short rows (np.max(axis=1) over 3
classes costs ~12 us for 300 rows, mostly per-row overhead), fancy indexing, and np.maximum
against a scalar (ReLU's 0: 4-5x the time of the same maximum against an array). The overrides
below use BLAS matrix-vector products for sums, column-wise maxima for narrow rows, flat take/put
for the true-class entries, and an array of zeros for ReLU. For large arrays, the element-wise
passes (bias and ReLU, the ReLU gradient, the optimizer updates) run compiled by numba where it
is installed, one pass each (passes.py), the same bits. Each is tied to its ``base.py``
reference by tests/backends/test_backends.py and tests/backends/test_passes.py.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from . import jit, passes
from . import schedule as slots
from .base import CLIP, Backend, Options
from .bf16 import BF16_BITS

# Rows this narrow get their maximum column by column (k - 1 vectorised ops) instead of a
# reduction along each short row.
NARROW_ROWS = 16
# Up to this many elements, ReLU's zeros are an array as big as the input (at most 256 KiB in
# float32, kept per shape); beyond it, a row of them (the faster, the bigger the array).
ZEROS_UP_TO = 1 << 16
# Elements per piece of an optimizer update. Each rule is several passes over its arrays (Adam's
# about ten), which for a large model stream through memory every time; piece by piece, the
# piece and the scratch stay in cache between passes (measured: SGD over 1.9M float32 1.04 ms
# whole, 0.62 ms in pieces). The same element-wise operations, so the same bits.
UPDATE_PIECE = 1 << 15


class NumpyBackend(Backend):
    name = "numpy"
    #: The compiled trainer on where numba is installed (why_not says where it runs).
    default_options = Options(one_kernel_trainer=True)

    def __init__(self) -> None:
        super().__init__(np)
        self._cache: dict[tuple, np.ndarray] = {}

    def why_not(self, feature: str, rows: int | None = None,
                sizes: tuple[int, int, int] | None = None, dtype: Any = None) -> str | None:
        # The compiled trainer (jit.py, with numba) takes the book's shape of network, up to
        # jit.COLUMNS_UP_TO inputs and classes together, where it measured faster than these
        # steps at every size tried; the rest take this backend's eager steps.
        if feature != "one_kernel_trainer":
            return super().why_not(feature, rows, sizes, dtype)
        if not self.one_kernel_trainer:
            return (f"switched off on the {self.name} backend; "
                    f"model.backend.one_kernel_trainer = True turns it on")
        if sizes is not None and sizes[0] + sizes[2] > jit.COLUMNS_UP_TO:
            return (f"the CPU one-kernel trainer takes up to {jit.COLUMNS_UP_TO} inputs and classes "
                    f"together (this network has {sizes[0]} + {sizes[2]}); wider networks take "
                    f"the NumPy steps, as fast or faster there")
        reason = jit.why_not()  # asked last: it imports numba
        return None if reason is None else f"the CPU one-kernel trainer {reason}"

    def train_in_one_kernel(self, X: Any, y: Any, params: Any, grads: Any, states: list[Any],
                            schedule: Any, totals: Any, epochs: int, rule: tuple[int, float, float],
                            outs: dict[str, Any]) -> None:
        jit.train(X, y, params, grads, states, schedule, totals, epochs, rule, outs)

    def device_name(self) -> str:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "CPU"

    def _kept(self, make: Any, shape: tuple[int, int], dtype: Any) -> np.ndarray:
        """``make(shape, dtype)`` (np.ones, np.zeros, or np.empty for scratch), made once per
        shape and dtype and kept."""
        key = (make, shape, dtype)
        if key not in self._cache:
            self._cache[key] = make(shape, dtype)
        return self._cache[key]

    def new_schedule(self, values: list[float]) -> Any:
        # A plain list: the CPU is the device, and reading numbers out of an array and writing
        # them back costs more (~0.4 us a step) than the whole update of a small network's
        # parameters takes besides.
        return [float(v) for v in values]

    # ---- element-wise passes: compiled where large (passes.py), else NumPy's ----------------

    def relu(self, x: Any, out: Any) -> Any:
        # np.maximum(x, 0) takes a loop for the scalar that is 4-5x slower than the one for two
        # arrays (NumPy 2.4 on a 2-core AMD EPYC: 300 x 64 float32, 11 us against 2.5 us with
        # zeros as big as x, 4.6 us with a row of zeros; 1024 x 1024, 469, 96 and 162 us). The
        # same maximum of the same values, so the same bits (NaN, -0 and denormals included).
        # Zeros as big as x where it is small, a row of them broadcast where it is large.
        if x.ndim != 2 or x.dtype not in passes.FLOATS:
            return super().relu(x, out=out)
        rows, cols = x.shape
        zeros = self._kept(np.zeros, (rows if x.size <= ZEROS_UP_TO else 1, cols), x.dtype)
        return np.maximum(x, zeros, out=out)

    def bias_relu(self, z: Any, biases: Any) -> Any:
        if passes.takes(z, biases):
            passes.bias_relu(z, biases.reshape(-1))
            return z
        return super().bias_relu(z, biases)

    def relu_backward(self, dvalues: Any, output: Any, out: Any) -> Any:
        if dvalues.shape != output.shape or not passes.takes(dvalues, output, out):
            return super().relu_backward(dvalues, output, out=out)
        if out is dvalues:
            passes.relu_backward_in_place(dvalues.reshape(-1), output.reshape(-1))
        else:
            passes.relu_backward(dvalues.reshape(-1), output.reshape(-1), out.reshape(-1))
        return out

    # ---- optimizer updates: compiled in one pass, else piece by piece (base.py's rules) -----
    # The compiled passes take their settings in the arrays' dtype, as NumPy casts a Python
    # number it combines with a float32 array, so they compute what base.py's rules compute.

    def sgd_update(self, params: Any, grads: Any, momentums: Any, schedule: Any, momentum: float,
                   scratch: Any) -> None:
        lr = float(schedule[slots.LR_T])
        if momentums is None and passes.takes(params, grads):
            passes.sgd(params.reshape(-1), grads.reshape(-1), params.dtype.type(-lr))
        elif momentums is not None and passes.takes(params, grads, momentums):
            typed = params.dtype.type
            passes.sgd_momentum(params.reshape(-1), grads.reshape(-1), momentums.reshape(-1),
                                typed(momentum), typed(lr))
        else:
            self._in_pieces(super().sgd_update, params, grads, (momentums,), (schedule, momentum),
                            scratch)

    def adagrad_update(self, params: Any, grads: Any, cache: Any, schedule: Any, epsilon: float,
                       scratch: Any) -> None:
        if passes.takes(params, grads, cache):
            self._cache_step(params, grads, cache, schedule, epsilon, 0.0, True)
        else:
            self._in_pieces(super().adagrad_update, params, grads, (cache,), (schedule, epsilon),
                            scratch)

    def rmsprop_update(self, params: Any, grads: Any, cache: Any, schedule: Any, epsilon: float,
                       rho: float, scratch: Any) -> None:
        if passes.takes(params, grads, cache):
            self._cache_step(params, grads, cache, schedule, epsilon, rho, False)
        else:
            self._in_pieces(super().rmsprop_update, params, grads, (cache,),
                            (schedule, epsilon, rho), scratch)

    def _cache_step(self, params: Any, grads: Any, cache: Any, schedule: Any, epsilon: float,
                    rho: float, adagrad: bool) -> None:
        typed = params.dtype.type
        passes.cache_step(params.reshape(-1), grads.reshape(-1), cache.reshape(-1), typed(rho),
                          typed(1 - rho), typed(epsilon), typed(-float(schedule[slots.LR_T])),
                          adagrad)

    def adam_update(self, params: Any, grads: Any, momentums: Any, cache: Any, schedule: Any,
                    epsilon: float, beta_1: float, beta_2: float, scratch: Any) -> None:
        if not passes.takes(params, grads, momentums, cache):
            self._in_pieces(super().adam_update, params, grads, (momentums, cache),
                            (schedule, epsilon, beta_1, beta_2), scratch)
            return
        typed = params.dtype.type
        lr, step = float(schedule[slots.LR_T]), int(round(float(schedule[slots.ITERATIONS])))
        passes.adam(params.reshape(-1), grads.reshape(-1), momentums.reshape(-1),
                    cache.reshape(-1), typed(beta_1), typed(1 - beta_1), typed(beta_2),
                    typed(1 - beta_2), typed(1.0 / (1 - beta_2**step)), typed(epsilon),
                    typed(-lr / (1 - beta_1**step)))

    @staticmethod
    def _in_pieces(rule: Any, params: Any, grads: Any, states: tuple, settings: tuple,
                   scratch: Any) -> None:
        """``rule(params, grads, *states, *settings, scratch)`` UPDATE_PIECE elements at a time
        (whole when small, or when an array is not contiguous and so has no flat view)."""
        arrays = (params, grads, scratch, *(a for a in states if a is not None))
        if params.size <= UPDATE_PIECE or not all(a.flags.c_contiguous for a in arrays):
            rule(params, grads, *states, *settings, scratch)
            return
        flat = [a.reshape(-1) for a in (params, grads, scratch)]
        flat_states = [None if a is None else a.reshape(-1) for a in states]
        for start in range(0, params.size, UPDATE_PIECE):
            piece = slice(start, start + UPDATE_PIECE)
            rule(flat[0][piece], flat[1][piece], *(None if a is None else a[piece] for a in flat_states),
                 *settings, flat[2][piece])

    def take_rows(self, x: Any, indices: Any, out: Any) -> Any:
        if out.dtype == BF16_BITS:
            return super().take_rows(x, indices, out)
        # np.take's default mode ("raise") fills a buffer of its own and then copies it to out;
        # "clip" writes out directly (a 1024 x 784 float32 batch: 0.34 ms against 0.81 here).
        # The indices are a shuffle's, always in range, so nothing is clipped.
        return np.take(x, indices, axis=0, out=out, mode="clip")

    def bias_grad(self, dvalues: Any, out: Any) -> Any:
        # Column sums as ones(1, n) @ dvalues: a BLAS GEMV, 2-4x faster than np.sum(axis=0).
        return np.matmul(self._kept(np.ones, (1, dvalues.shape[0]), dvalues.dtype), dvalues, out=out)

    def _row_max(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        k = x.shape[1]
        if k > NARROW_ROWS:
            return np.maximum.reduce(x, axis=1, keepdims=True, out=out)
        np.copyto(out, x[:, :1])
        for j in range(1, k):
            np.maximum(out, x[:, j:j + 1], out=out)
        return out

    def softmax(self, x: Any, out: Any) -> Any:
        n, k = x.shape
        rows = self._kept(np.empty, (n, 1), out.dtype)  # row maxima, then row sums
        self._row_max(x, rows)
        np.subtract(x, rows, out=out)
        np.exp(out, out=out)
        np.matmul(out, self._kept(np.ones, (k, 1), out.dtype), out=rows)  # row sums, as a GEMV
        return np.divide(out, rows, out=out)

    def softmax_cross_entropy(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                              losses: Any, dlogits16: Any = None) -> Any:
        n, k = logits.shape
        self.softmax(logits, out=probs)
        # Position of each row's true class in the flattened (n, k) array.
        flat = labels + np.arange(0, n * k, k)
        np.take(probs.reshape(-1), flat, out=losses)  # p[true class]
        if dlogits is not None:
            # (p - onehot) / n: scale every entry, then overwrite the true-class entries.
            np.multiply(probs, 1.0 / n, out=dlogits)
            np.put(dlogits, flat, (losses - 1) * (1.0 / n))
            if dlogits16 is not None:  # precision "bf16" (tests' reference backend)
                self.to_bf16(dlogits, dlogits16)
        np.maximum(losses, CLIP, out=losses)
        np.minimum(losses, 1 - CLIP, out=losses)
        np.log(losses, out=losses)
        return np.negative(losses, out=losses)
