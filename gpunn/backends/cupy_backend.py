"""The GPU backend: CuPy. The reference ops of ``base.py`` run as they are on CuPy arrays; the hot
ones are overridden here by the fused kernels of ``cuda/kernels.cu`` (one cupy.RawModule, compiled
lazily on first use and cached by CuPy), and GEMMs go through cuBLAS with a handle of our own
(``cuda/cublas.py``), which unlike CuPy's may be called while a stream is being captured.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import cuda
from .base import Backend

THREADS = 256
MAX_BLOCKS = 8192  # grid-stride loops cover the rest


def _blocks(size: int) -> int:
    return max(1, min((size + THREADS - 1) // THREADS, MAX_BLOCKS))


def _row_threads(k: int) -> int:
    """Threads per row of the softmax kernel: one warp for a few classes, more for many."""
    return 32 if k <= 64 else 128 if k <= 512 else 256


class CupyBackend(Backend):
    name = "cupy"
    plans_steps = True

    def __init__(self) -> None:
        import cupy

        super().__init__(cupy)
        self._module: Any = None
        # [iterations, lr, decay, beta_1, beta_2, lr_t, 1/(1-beta_1^t), 1/(1-beta_2^t)], as the
        # update kernels read it; eager updates write lr_t and the corrections here each step.
        self._eager_schedule = cupy.zeros(8, dtype=cupy.float64)
        self._dummy_totals = cupy.zeros(2, dtype=cupy.float64)
        from .cuda.cublas import Gemm

        self.blas = Gemm(cupy)

    # ---- arrays and devices ---------------------------------------------------------------

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, self.xp.ndarray):
            return self.xp.asnumpy(x)
        return np.array(x, copy=True)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def permutation(self, n: int, rng: np.random.Generator) -> Any:
        """A shuffle order made on the device (sorting random keys), seeded from the host
        generator: the same seed gives the same order, and no index array crosses the bus."""
        keys = self.xp.random.RandomState(int(rng.integers(2**63))).random_sample(n)
        return self.xp.argsort(keys)

    def device_name(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def compute_capability(self) -> tuple[int, int]:
        cc = self.xp.cuda.Device().compute_capability  # e.g. "90"
        return int(cc[:-1]), int(cc[-1])

    def capture(self, body: Any) -> Any:
        """Record ``body`` as a CUDA graph on a capture stream; replays go to the current stream.
        Without capturable GEMMs (no nvmath-python) there is no graph: None."""
        if not self.blas.capturable:
            return None
        cp = self.xp
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            self.blas.bind_stream()  # set stream and workspace before capture, not inside it
            stream.begin_capture()
            try:
                body()
            finally:
                graph = stream.end_capture()
        return lambda: graph.launch(stream=cp.cuda.get_current_stream())

    def set_precision(self, precision: str) -> None:
        if precision == "tf32":
            major, minor = self.compute_capability()
            if major < 8:
                raise ValueError(f"precision 'tf32' needs compute capability 8.0 or newer; this "
                                 f"GPU ({self.device_name()}) is {major}.{minor}")
            if not self.blas.capturable:
                raise ValueError(f"precision 'tf32' needs cuBLAS through nvmath-python: "
                                 f"{self.blas.why_not}")
        elif precision != "fp32":
            raise ValueError(f"precision must be 'fp32' or 'tf32'; got {precision!r}")
        self.blas.set_tf32(precision == "tf32")

    def kernel(self, name: str, dtype: Any = None) -> Any:
        """A kernel of kernels.cu; templated ones by element type ("float" or "double")."""
        if self._module is None:
            self._module = self.xp.RawModule(code=cuda.source(), options=cuda.NVRTC_OPTIONS,
                                             name_expressions=cuda.name_expressions())
        if dtype is not None:
            name = f"{name}<{'float' if np.dtype(dtype) == np.float32 else 'double'}>"
        return self._module.get_function(name)

    # ---- dense layer ----------------------------------------------------------------------

    def gemm(self, a: Any, b: Any, out: Any, trans_a: bool = False, trans_b: bool = False) -> Any:
        return self.blas.gemm(a, b, out, trans_a, trans_b)

    def _bias_act(self, z: Any, biases: Any, relu: int) -> Any:
        n, k = z.shape
        self.kernel("bias_act", z.dtype)((_blocks(z.size),), (THREADS,),
                                         (z, biases, np.int64(n), np.int32(k), np.int32(relu)))
        return z

    def add_bias(self, z: Any, biases: Any) -> Any:
        return self._bias_act(z, biases, 0)

    def bias_relu(self, z: Any, biases: Any) -> Any:
        return self._bias_act(z, biases, 1)

    def relu_backward(self, dvalues: Any, output: Any, out: Any) -> Any:
        if out is not dvalues:
            self.xp.copyto(out, dvalues)
        self.kernel("relu_backward", out.dtype)((_blocks(out.size),), (THREADS,),
                                                (out, output, np.int64(out.size)))
        return out

    def bias_grad(self, dvalues: Any, out: Any) -> Any:
        n, k = dvalues.shape
        self.kernel("column_sum", dvalues.dtype)(((k + 31) // 32,), (32, 8),
                                                 (dvalues, out, np.int32(n), np.int32(k)))
        return out

    def take_rows(self, x: Any, indices: Any, out: Any) -> Any:
        if x.ndim != 2 or x.dtype not in (np.float32, np.float64):
            return super().take_rows(x, indices, out)  # labels: CuPy's own gather
        rows, cols = out.shape
        self.kernel("take_rows", x.dtype)((_blocks(out.size),), (THREADS,),
                                          (x, indices, out, np.int64(rows), np.int32(cols)))
        return out

    # ---- loss -----------------------------------------------------------------------------

    def softmax_cross_entropy(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                              losses: Any) -> Any:
        return self.softmax_cross_entropy_totals(logits, labels, probs, dlogits, losses, None)

    def softmax_cross_entropy_totals(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                                     losses: Any, totals: Any) -> Any:
        n, k = logits.shape
        t = logits.dtype.type
        if labels.dtype != np.int64:  # the kernel reads 64-bit labels (models always give them)
            labels = labels.astype(np.int64)
        self.kernel("softmax_cross_entropy", logits.dtype)(
            (n,), (_row_threads(k),),
            (logits, labels, probs, probs if dlogits is None else dlogits, losses,
             self._dummy_totals if totals is None else totals, np.int32(n), np.int32(k),
             t(1.0 / n), np.int32(dlogits is not None), np.int32(totals is not None)))
        return losses

    # ---- optimizer updates ------------------------------------------------------------------

    def _eager(self, lr: float, correction_1: float = 1.0, correction_2: float = 1.0) -> Any:
        self._eager_schedule[5:8] = self.xp.asarray([lr, correction_1, correction_2])
        return self._eager_schedule

    def sgd_update(self, params: Any, grads: Any, momentums: Any, lr: float, momentum: float,
                   scratch: Any) -> None:
        self.sgd_update_scheduled(params, grads, momentums, self._eager(lr), momentum, scratch)

    def sgd_update_scheduled(self, params: Any, grads: Any, momentums: Any, schedule: Any,
                             momentum: float, scratch: Any) -> None:
        self.kernel("sgd_update", params.dtype)(
            (_blocks(params.size),), (THREADS,),
            (params, grads, params if momentums is None else momentums, schedule,
             np.float64(momentum), np.int32(momentums is not None), np.int64(params.size)))

    def adagrad_update(self, params: Any, grads: Any, cache: Any, lr: float, epsilon: float,
                       scratch: Any) -> None:
        self.cache_update_scheduled(params, grads, cache, self._eager(lr), epsilon, -1.0, scratch)

    def rmsprop_update(self, params: Any, grads: Any, cache: Any, lr: float, epsilon: float,
                       rho: float, scratch: Any) -> None:
        self.cache_update_scheduled(params, grads, cache, self._eager(lr), epsilon, rho, scratch)

    def cache_update_scheduled(self, params: Any, grads: Any, cache: Any, schedule: Any,
                               epsilon: float, rho: float, scratch: Any) -> None:
        self.kernel("cache_update", params.dtype)(
            (_blocks(params.size),), (THREADS,),
            (params, grads, cache, schedule, np.float64(epsilon), np.float64(rho),
             np.int64(params.size)))

    def adam_update(self, params: Any, grads: Any, momentums: Any, cache: Any, lr: float,
                    epsilon: float, beta_1: float, beta_2: float, step: int, scratch: Any) -> None:
        schedule = self._eager(lr, 1.0 / (1 - beta_1**step), 1.0 / (1 - beta_2**step))
        self.adam_update_scheduled(params, grads, momentums, cache, schedule, epsilon, beta_1,
                                   beta_2, scratch)

    def adam_update_scheduled(self, params: Any, grads: Any, momentums: Any, cache: Any,
                              schedule: Any, epsilon: float, beta_1: float, beta_2: float,
                              scratch: Any) -> None:
        self.kernel("adam_update", params.dtype)(
            (_blocks(params.size),), (THREADS,),
            (params, grads, momentums, cache, schedule, np.float64(epsilon), np.float64(beta_1),
             np.float64(beta_2), np.int64(params.size)))

    def advance_schedule(self, schedule: Any) -> None:
        self.kernel("advance_schedule")((1,), (1,), (schedule,))
