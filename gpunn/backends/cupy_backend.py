"""The GPU backend: CuPy. The reference ops of ``base.py`` run as they are on CuPy arrays; the hot
ones are overridden here by the fused kernels of ``cuda/kernels.cu`` (one cupy.RawModule, compiled
lazily on first use and cached by CuPy), and GEMMs go through cuBLAS with a handle of our own
(``cuda/cublas.py``), which unlike CuPy's may be called while a stream is being captured.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from . import cuda
from .base import Backend
from .cuda.cublaslt import relu_mask_shape

_log = logging.getLogger("gpunn")

EPILOGUE_POLICIES = ("auto", "always", "never")
THREADS = 256
CUDA_DEV_ATTR_MAX_SHARED_OPTIN = 97  # cudaDevAttrMaxSharedMemoryPerBlockOptin
SMALL_NET_THREADS = 512  # kernels.cu's SMALL_NET_THREADS (its __launch_bounds__)
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
        from .cuda.cublaslt import Epilogues

        self.blas = Gemm(cupy)
        self.epilogues = Epilogues(cupy)
        self.epilogue_policy = "auto"
        self._epilogue_faster: dict[tuple, bool] = {}
        self._said_epilogue_failed = False
        #: Train Dense -> ReLU -> Dense networks that fit in one block's shared memory with one
        #: kernel per launch (``train_small_net``). Off until it has been measured on a GPU.
        self.small_net_kernel = False
        self._small_net_shared: dict[Any, int] = {}

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
        keys = self.xp.random.RandomState(int(rng.integers(2**32))).random_sample(n)
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
        self.epilogues.tf32 = precision == "tf32"

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

    # ---- cuBLASLt epilogues, where they measure faster ---------------------------------------

    @property
    def epilogue_policy(self) -> str:
        """"auto": per problem, the cuBLASLt epilogue or the separate kernels, whichever measured
        faster the first time; "always" / "never": one or the other (tests, comparisons)."""
        return self._epilogue_policy

    @epilogue_policy.setter
    def epilogue_policy(self, value: str) -> None:
        if value not in EPILOGUE_POLICIES:
            raise ValueError(f"epilogue_policy must be one of "
                             f"{', '.join(map(repr, EPILOGUE_POLICIES))}; got {value!r}")
        self._epilogue_policy = value

    def relu_mask_shape(self, rows: int, cols: int) -> tuple[int, int] | None:
        if not self.epilogues.available or self.epilogue_policy == "never":
            return None
        return relu_mask_shape(rows, cols)

    def dense_forward(self, inputs: Any, weights: Any, biases: Any, out: Any, relu: bool,
                      mask: Any = None) -> bool:
        kind = "relu_mask" if mask is not None else "relu" if relu else "bias"
        return self._fused_if_faster(
            ("forward", kind, inputs.shape, weights.shape, out.dtype),
            lambda: self.epilogues.forward(inputs, weights, biases, out, relu, mask),
            lambda: super(CupyBackend, self).dense_forward(inputs, weights, biases, out, relu))

    def dinputs_relu_bgrad(self, dvalues: Any, weights: Any, out: Any, below_output: Any,
                           below_dbiases: Any, mask: Any = None) -> Any:
        def separate() -> None:
            super(CupyBackend, self).dinputs_relu_bgrad(dvalues, weights, out, below_output,
                                                        below_dbiases)

        if mask is None:  # the forward pass kept no mask: the separate kernels read the output
            separate()
        else:
            self._fused_if_faster(
                ("dinputs", dvalues.shape, weights.shape, out.dtype),
                lambda: self.epilogues.dinputs_relu_bgrad(dvalues, weights, out, mask,
                                                          below_dbiases),
                separate)
        return out

    def _fused_if_faster(self, problem: tuple, fused: Any, separate: Any) -> bool:
        """Run ``fused`` (a cuBLASLt call that returns False where it cannot run) or
        ``separate`` (GEMM, then kernels), whichever was faster the first time this problem
        came; returns whether the fused one ran. Both write the same outputs from the same
        inputs, so running each a few times to time them changes nothing."""
        if not self.epilogues.available or self.epilogue_policy == "never":
            separate()
            return False
        key = problem + (self.epilogues.tf32, self.epilogue_policy)
        faster = self._epilogue_faster.get(key)
        if faster is None:
            if self.xp.cuda.get_current_stream().is_capturing():
                faster = False  # nothing is timed inside a capture (planning times it first)
            elif not self._try(fused):
                faster = self._epilogue_faster[key] = False  # no cuBLASLt algorithm for it
            elif self.epilogue_policy == "always":
                faster = self._epilogue_faster[key] = True
            else:
                faster = self._epilogue_faster[key] = self._time(fused) < self._time(separate)
        if faster and fused():
            return True
        separate()
        return False

    def _try(self, fused: Any) -> bool:
        """The first call of an epilogue for a problem. Should cuBLASLt fail outright, training
        goes on with the separate kernels, which do the same work; said once."""
        try:
            return bool(fused())
        except Exception as exc:
            if not self._said_epilogue_failed:
                self._said_epilogue_failed = True
                _log.warning("gpunn: a cuBLASLt epilogue failed (%s: %s); using separate kernels "
                             "where it did", type(exc).__name__, exc)
            return False

    def _time(self, fn: Any, repeats: int = 10) -> float:
        """Device milliseconds for ``repeats`` calls of ``fn`` after one warm-up call."""
        cp = self.xp
        fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end)

    def take_rows(self, x: Any, indices: Any, out: Any) -> Any:
        if x.ndim != 2 or x.dtype not in (np.float32, np.float64):
            return super().take_rows(x, indices, out)  # labels: CuPy's own gather
        rows, cols = out.shape
        self.kernel("take_rows", x.dtype)((_blocks(out.size),), (THREADS,),
                                          (x, indices, out, np.int64(rows), np.int32(cols)))
        return out

    # ---- a whole small network in one kernel ------------------------------------------------

    @staticmethod
    def small_net_bytes(rows: int, sizes: tuple[int, int, int], dtype: Any) -> int:
        """Shared memory train_small_net needs (its layout is described in kernels.cu)."""
        n_in, hidden, k = sizes
        n_params = n_in * hidden + hidden + hidden * k + k
        elements = rows * (n_in + (hidden | 1) + k) + 4 * n_params + SMALL_NET_THREADS
        return 8 * (SMALL_NET_THREADS + 8) + np.dtype(dtype).itemsize * elements

    def fits_small_net(self, rows: int, sizes: tuple[int, int, int], dtype: Any) -> bool:
        if not self.small_net_kernel:
            return False
        runtime = self.xp.cuda.runtime
        limit = runtime.deviceGetAttribute(CUDA_DEV_ATTR_MAX_SHARED_OPTIN, runtime.getDevice())
        return self.small_net_bytes(rows, sizes, dtype) <= limit

    def train_small_net(self, X: Any, y: Any, params: Any, grads: Any, states: list[Any],
                        schedule: Any, totals: Any, epochs: int, rule: tuple[int, float, float],
                        outs: dict[str, Any]) -> None:
        rows, n_in = X.shape
        hidden, k = outs["hidden"].shape[1], outs["logits"].shape[1]
        nbytes = self.small_net_bytes(rows, (n_in, hidden, k), X.dtype)
        kernel = self.kernel("train_small_net", X.dtype)
        if self._small_net_shared.get(X.dtype, 0) < nbytes:  # beyond 48 KiB is opted into
            kernel.max_dynamic_shared_size_bytes = nbytes
            self._small_net_shared[X.dtype] = nbytes
        code, hyper, epsilon = rule
        state_1 = states[0] if states else params  # unused by the rules that keep no state
        state_2 = states[1] if len(states) > 1 else params
        kernel((1,), (SMALL_NET_THREADS,),
               (X, y, np.int32(rows), np.int32(n_in), np.int32(hidden), np.int32(k), params,
                grads, state_1, state_2, schedule, totals, np.int32(epochs), np.int32(code),
                np.float64(hyper), np.float64(epsilon), outs["hidden"], outs["dhidden"],
                outs["logits"], outs["probs"], outs["dlogits"], outs["losses"]),
               shared_mem=nbytes)

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
