"""The GPU backend: CuPy. The reference ops of ``base.py`` run as they are on CuPy arrays; the hot
ones are dispatched here to the fused kernels of ``cuda/kernels.cu`` (launched by
``cuda/launch.py``), GEMMs go through cuBLAS with a handle of our own (``cuda/cublas.py``), which
unlike CuPy's may be called while a stream is being captured, and a Dense layer's bias and ReLU
through cuBLASLt epilogues where they measure faster (``cuda/cublaslt.py``, ``cuda/epilogues.py``).

The device state (compiled kernels, handles, measurements) lives in objects every model's
``configured`` copy of the backend shares; each model's options (precision, epilogue policy,
one-kernel trainer) are its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .base import Backend, Options
from .bf16 import BF16_BITS
from .cuda import launch, streams, timing, transfer
from .cuda.cublaslt import relu_mask_shape

CUDA_DEV_ATTR_MAX_SHARED_OPTIN = 97  # cudaDevAttrMaxSharedMemoryPerBlockOptin


def _narrow(outputs: int, out: Any, operands: tuple[Any, Any], others: tuple[Any, ...],
            out16: Any = None, relu_output: Any = None) -> bool:
    """Whether a product of a Dense layer with ``outputs`` outputs may take the narrow kernels:
    at most launch.NARROW_OUTPUTS of them; ``out`` float32 or float64, the GEMM's two
    ``operands`` of its dtype or both bfloat16, the ``others`` (None: not given) of its dtype;
    a ``relu_output`` (the layer below's) of the operands' dtype, with ``out16`` for the result
    where that is bfloat16; every array C-contiguous (the kernels read rows at fixed strides)."""
    kinds = {a.dtype for a in operands}
    kind = kinds.pop() if len(kinds) == 1 else None
    arrays = (out, *operands, *others, out16, relu_output)
    return (outputs <= launch.NARROW_OUTPUTS and out.dtype in (np.float32, np.float64)
            and kind is not None and kind in (out.dtype, BF16_BITS)  # (dtype == None is float64)
            and all(a is None or a.dtype == out.dtype for a in others)
            and (relu_output is None or relu_output.dtype == kind)
            and (relu_output is None or kind != BF16_BITS or out16 is not None)
            and all(a is None or a.flags.c_contiguous for a in arrays))


class CupyBackend(Backend):
    name = "cupy"
    #: The one-kernel trainer on by default: on an H200 (2026-11-27) it took the book's run in
    #: 0.316 s against the planned steps' 0.542 s, and a small step in 0.0345 ms against 0.0424.
    #: Tuned GEMMs on by default: on an H200 (2026-11-27, tenth session) a large tf32 step took
    #: 8.37 ms against 8.99 untuned, small 0.0363 against 0.0398 (fp32); of the nine workloads
    #: and precisions measured, medium tf32 alone was slower (0.152 ms against 0.147). With
    #: cuBLAS's own choice timed beside cuBLASLt's (eleventh session): 0.1360 against 0.1374.
    #: Streamed batches read on worker threads by default (those of 1 MiB or more): on an H200
    #: (2026-11-27, eleventh session) streamed medium tf32 steps took 0.220 ms against 0.414,
    #: large tf32 8.46 ms against 8.63 (resident: 0.148 and 8.32).
    #: The narrow kernels on by default: each is timed against the GEMM path and kept only where
    #: faster, so they cost a first step's timing at most (not yet timed on a GPU).
    default_options = Options(one_kernel_trainer=True, upload_thread=True, tune_gemms=True,
                              narrow_kernels=True)

    def __init__(self) -> None:
        import cupy

        from .cuda.cublas import Gemm
        from .cuda.cublaslt import Epilogues
        from .cuda.epilogues import EpilogueChoice

        super().__init__(cupy)
        self.kernels = launch.Kernels(launch.compiled(cupy), cupy)
        self.blas = Gemm(cupy)
        self.epilogues = Epilogues(cupy, self.kernels.hold_device)
        self.epilogue_choice = EpilogueChoice(cupy, self.epilogues.available, self.kernels.hold_device)
        self.narrow_choice = timing.Faster(cupy, self.kernels.hold_device)
        #: Per problem, whether tf32 weight gradients run faster from a transposed copy of an
        #: operand (``_gemm_weight_grads``).
        self.transpose_choice = timing.Faster(cupy, self.kernels.hold_device)
        #: Where a recorded step's backward runs the work it puts aside (overlap_weight_grads).
        self.side = streams.SideStream(transfer.CupyRuntime(cupy), self._give_own_gemm_state)

    def _give_own_gemm_state(self, stream: Any) -> None:
        self.blas.add_stream(stream)
        self.epilogues.add_stream(stream)

    # ---- what runs here ------------------------------------------------------------------

    def why_not(self, feature: str, rows: int | None = None,
                sizes: tuple[int, int, int] | None = None, dtype: Any = None) -> str | None:
        if feature == "planned_steps":
            return None
        if feature == "graphs":
            return self.blas.why_not  # None when cuBLAS runs through nvmath-python
        if feature == "epilogues":
            return self.epilogues.why_not
        if feature in ("tf32", "bf16"):
            major, minor = self.compute_capability()
            if major < 8:
                return (f"precision {feature!r} needs compute capability 8.0 or newer; this GPU "
                        f"({self.device_name()}) is {major}.{minor}")
            reason = self.blas.why_not if feature == "tf32" else self.blas.why_not_bf16
            return None if reason is None else \
                f"precision {feature!r} needs cuBLAS through nvmath-python: {reason}"
        if feature == "one_kernel_trainer":
            return self._one_kernel_problem(rows, sizes, dtype)
        return super().why_not(feature)

    def _one_kernel_problem(self, rows: int | None, sizes: tuple[int, int, int] | None,
                            dtype: Any) -> str | None:
        if not self.one_kernel_trainer:
            return "switched off; model.backend.one_kernel_trainer = True turns it on"
        if rows is None:
            return None
        limit, need = self.max_shared_bytes(), launch.one_kernel_bytes(rows, sizes, dtype)
        if need > limit:
            return (f"{rows} rows of this network need {need} bytes of shared memory for the "
                    f"one-kernel trainer; a block of this GPU may have {limit}")
        return None

    def max_shared_bytes(self) -> int:
        """The shared memory one block of this GPU may opt into."""
        runtime = self.xp.cuda.runtime
        return runtime.deviceGetAttribute(CUDA_DEV_ATTR_MAX_SHARED_OPTIN, runtime.getDevice())

    # ---- arrays and devices ---------------------------------------------------------------

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, self.xp.ndarray):
            return self.xp.asnumpy(x)
        return np.array(x, copy=True)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def hold(self, seconds: float) -> None:
        self.kernels.hold_device(seconds)

    def free_memory(self) -> float:
        return float(self.xp.cuda.runtime.memGetInfo()[0])

    def uploader(self, rows: int, x_tail: tuple[int, ...], x_dtype: Any,
                 y_tail: tuple[int, ...] | None, y_dtype: Any, most_batches: int = 1) -> Any:
        batches = transfer.batches_per_start(rows, x_tail, x_dtype, y_tail, y_dtype, most_batches)
        background = self.options.upload_thread and transfer.worth_workers(
            rows * batches, x_tail, x_dtype, y_tail, y_dtype)
        return transfer.PinnedUploader(transfer.CupyRuntime(self.xp), rows, x_tail, x_dtype,
                                       y_tail, y_dtype, batches=batches, background=background)

    #: The device generator shuffle orders and dropout masks are drawn from, made once and
    #: reseeded from a host generator for each draw (making and destroying a cuRAND generator
    #: every epoch cost more than the shuffle).
    _device_rng: Any = None

    def _seeded(self, rng: np.random.Generator) -> Any:
        """The device generator, seeded by one draw of ``rng``: the same host state gives the
        same draws on the device, and the host generator moves one draw."""
        if self._device_rng is None:
            self._device_rng = self.xp.random.RandomState()
        self._device_rng.seed(int(rng.integers(2**32)))  # as a new RandomState(seed) would start
        return self._device_rng

    def permutation(self, n: int, rng: np.random.Generator) -> Any:
        """A shuffle order made on the device (sorting random keys), seeded from the host
        generator: the same seed gives the same order, and no index array crosses the bus."""
        return self.xp.argsort(self._seeded(rng).random_sample(n))

    def dropout_mask(self, shape: tuple[int, ...], rate: float, rng: np.random.Generator,
                     dtype: Any) -> Any:
        """base.py's inverted-dropout mask, its uniforms drawn on the device (not one per unit on
        the host, copied over every step): the same seed gives the same mask (a resumed run's
        too), and the host generator moves one draw a mask."""
        keep = self._seeded(rng).random_sample(shape) >= rate
        return self.xp.multiply(keep, 1.0 / (1.0 - rate), dtype=dtype)

    def device_name(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def compute_capability(self) -> tuple[int, int]:
        cc = self.xp.cuda.Device().compute_capability  # e.g. "90"
        return int(cc[:-1]), int(cc[-1])

    def capture(self, body: Any) -> Any:
        """Record ``body`` as a CUDA graph on a capture stream; replays go to the current stream."""
        if self.blas.why_not is not None:
            raise RuntimeError(self.blas.why_not)
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

    def capturing(self) -> bool:
        """Whether a graph is being recorded on the current stream now."""
        return self.xp.cuda.get_current_stream().is_capturing()

    #: The side stream while a backward pass puts work aside there (``overlap``), else None.
    _aside_to: Any = None

    def overlap(self) -> contextlib.AbstractContextManager[None]:
        return self._overlapping() if self.overlap_weight_grads else super().overlap()

    @contextlib.contextmanager
    def _overlapping(self) -> Iterator[None]:
        # Only in a recorded step: outside a capture each way of a layer's products is timed
        # (tune_gemms, the narrow and epilogue choices), and must have the device to itself.
        # The side stream is made outside a capture (the step's first call), never inside one.
        side = None
        if not self.capturing():
            self.side.make()
        elif self.side.made:
            side = self.side
        self._aside_to = side
        try:
            yield
        finally:
            self._aside_to = None
            if side is not None:
                side.join()

    def aside(self, work: Callable[[], Any]) -> None:
        if self._aside_to is None:
            work()
        else:
            self._aside_to.run(work)

    def take_rows(self, x: Any, indices: Any, out: Any) -> Any:
        if x.ndim != 2 or x.dtype not in (np.float32, np.float64) \
                or (out.dtype == BF16_BITS and x.dtype != np.float32):
            return super().take_rows(x, indices, out)  # labels: CuPy's own gather
        return self.kernels.take_rows(x, indices, out)

    # ---- dense layer ----------------------------------------------------------------------

    @property
    def _tf32(self) -> bool:
        return self.options.precision == "tf32"

    def gemm(self, a: Any, b: Any, out: Any, trans_a: bool = False, trans_b: bool = False) -> Any:
        # Tuned, a GEMM goes through cuBLASLt, whose algorithms can be timed one by one; cuBLAS
        # picks its own and keeps its choice to itself, so it is timed beside them, and kept
        # where it is the fastest.
        def by_cublas() -> Any:
            return self.blas.gemm(a, b, out, trans_a, trans_b, tf32=self._tf32)

        if self.tune_gemms and self.epilogues.available and self.epilogues.matmul(
                a, b, out, trans_a, trans_b, self._tf32, tune=True, fallback=by_cublas):
            return out
        return by_cublas()

    def to_bf16(self, x: Any, out: Any) -> Any:
        if x.dtype != np.float32 or not (x.flags.c_contiguous and out.flags.c_contiguous):
            return super().to_bf16(x, out)
        return self.kernels.float_to_bf16(x, out)

    def add_bias(self, z: Any, biases: Any) -> Any:
        return self.kernels.bias_act(z, biases, relu=False)

    def bias_relu(self, z: Any, biases: Any) -> Any:
        return self.kernels.bias_act(z, biases, relu=True)

    def relu_backward(self, dvalues: Any, output: Any, out: Any) -> Any:
        if output.dtype != dvalues.dtype:  # a bfloat16 output: the reference op widens it
            return super().relu_backward(dvalues, output, out)
        if out is not dvalues:
            self.xp.copyto(out, dvalues)
        return self.kernels.relu_backward(out, output)

    def bias_grad(self, dvalues: Any, out: Any) -> Any:
        return self.kernels.column_sum(dvalues, out)

    def weight_grads(self, inputs: Any, dz: Any, dvalues: Any, dweights: Any, dbiases: Any,
                     scratch: Any = None) -> None:
        def gemm() -> None:
            self._gemm_weight_grads(inputs, dz, dvalues, dweights, dbiases, scratch)

        if not (self.narrow_kernels
                and _narrow(dweights.shape[1], dweights, (inputs, dz), (dvalues, dbiases))):
            return gemm()
        self.narrow_choice.run(
            ("weight_grads", inputs.shape, dweights.shape, inputs.dtype, dweights.dtype,
             dbiases is not None, self.precision, self.tune_gemms),
            lambda: self.kernels.narrow_weight_grads(inputs, dz, dvalues, dweights, dbiases), gemm)

    def _gemm_weight_grads(self, inputs: Any, dz: Any, dvalues: Any, dweights: Any,
                           dbiases: Any, scratch: Any) -> None:
        """weight_grads through a GEMM: as base.py's, or, for tuned tf32 GEMMs, from a copy of
        the narrower operand transposed so that it runs along the sum (the batch), where that
        measured faster, copy included (kernels.cu's transpose says why it can be). The copy is
        written into the layer's ``scratch`` buffer "transposed", as big as that operand."""
        def as_they_are() -> None:
            super(CupyBackend, self).weight_grads(inputs, dz, dvalues, dweights, dbiases)

        if not (self._tf32 and self.tune_gemms and inputs.dtype == dz.dtype == np.float32
                and inputs.flags.c_contiguous and dz.flags.c_contiguous):
            return as_they_are()

        def copy(x: Any) -> Any:  # x.T, C-contiguous
            shape = x.shape[::-1]
            out = self.xp.empty(shape, np.float32) if scratch is None else \
                scratch("transposed", shape, np.float32)
            return self.kernels.transpose(x, out)

        def transposed() -> None:
            if inputs.shape[1] <= dz.shape[1]:  # inputs.T @ dz = (the copy) @ dz
                self.gemm(copy(inputs), dz, out=dweights)
            else:  # inputs.T @ (the copy).T
                self.gemm(inputs, copy(dz), out=dweights, trans_a=True, trans_b=True)
            if dbiases is not None:
                self.bias_grad(dvalues, out=dbiases)

        self.transpose_choice.run(("weight_grads", inputs.shape, dz.shape), transposed, as_they_are)

    def relu_mask_shape(self, rows: int, cols: int) -> tuple[int, int] | None:
        if not self.epilogues.available or self.epilogue_policy == "never":
            return None
        return relu_mask_shape(rows, cols)

    def dense_forward(self, inputs: Any, weights: Any, biases: Any, out: Any, relu: bool,
                      mask: Any = None, out16: Any = None) -> bool:
        def gemm() -> bool:
            return self._gemm_dense_forward(inputs, weights, biases, out, relu, mask, out16)

        if relu or out16 is not None or not self.narrow_kernels \
                or not _narrow(out.shape[1], out, (inputs, weights), (biases,)):
            return gemm()
        self.narrow_choice.run(
            ("forward", inputs.shape, weights.shape, inputs.dtype, out.dtype, self.precision,
             self.tune_gemms, self.epilogue_policy),
            lambda: self.kernels.narrow_forward(inputs, weights, biases, out), gemm)
        return False

    def _gemm_dense_forward(self, inputs: Any, weights: Any, biases: Any, out: Any, relu: bool,
                            mask: Any, out16: Any) -> bool:
        """dense_forward through a GEMM: cuBLASLt's epilogue or the separate kernels. With
        bfloat16 operands the epilogue writes a bfloat16 ``out16`` itself, as the separate bias
        pass does (below another Dense layer, the output is kept in bfloat16 alone)."""
        bf16 = inputs.dtype == BF16_BITS

        def separate() -> None:
            if bf16:
                self.gemm(inputs, weights, out=out)
                self.kernels.bias_act(out, biases, relu, out16, only16=out16 is not None)
            else:
                super(CupyBackend, self).dense_forward(inputs, weights, biases, out, relu)

        result = out16 if bf16 and out16 is not None else out

        def epilogue(kind: str, into_mask: Any, otherwise: Any) -> bool:
            # Keyed by the operands' and result's types too: a bf16 model's answer is not a
            # float32 model's of the same shapes.
            return self.epilogue_choice.run(
                ("forward", kind, inputs.shape, weights.shape, inputs.dtype, result.dtype,
                 self.tune_gemms),
                lambda: self.epilogues.forward(inputs, weights, biases, result, relu, into_mask,
                                               self._tf32, self.tune_gemms),
                otherwise, self.epilogue_policy, self._tf32)

        if mask is None:
            epilogue("relu" if relu else "bias", None, separate)
            wrote_mask = False
        else:
            # Where writing the mask (RELU_AUX_BIAS) is slower, the bias and ReLU may still ride
            # on the GEMM (RELU_BIAS), whichever of that and the separate passes is faster; the
            # backward then reads the ReLU from the output, as after the separate passes. (On an
            # H200 a tf32 forward GEMM writing the mask took 24.6 us on medium against 13.6 for
            # the plain GEMM, 0.97 ms on large against 0.71: gemm_tuning.py.)
            wrote_mask = epilogue("relu_mask", mask, lambda: epilogue("relu", None, separate))
        if out16 is not None and result is out:  # float32 operands, a bf16 copy asked for
            self.to_bf16(out, out16)
        return wrote_mask

    def dinputs_relu_bgrad(self, dvalues: Any, weights: Any, out: Any, below_output: Any,
                           below_dbiases: Any, mask: Any = None, out16: Any = None) -> Any:
        def gemm() -> Any:
            return self._gemm_dinputs_relu_bgrad(dvalues, weights, out, below_output,
                                                 below_dbiases, mask, out16)

        result = out if out16 is None else out16
        # From the output where a mask was kept too: a ReLU's output is positive where its mask
        # says it passed, NaN included (the epilogue's ReLU makes it 0, its mask bit 0).
        if not (self.narrow_kernels and _narrow(weights.shape[1], out, (dvalues, weights),
                                                (below_dbiases,), out16, below_output)):
            gemm()
            return result
        self.narrow_choice.run(
            ("dinputs", dvalues.shape, weights.shape, dvalues.dtype, out.dtype, mask is not None,
             self.precision, self.tune_gemms, self.epilogue_policy),
            lambda: self.kernels.narrow_dinputs_relu_bgrad(dvalues, weights, out, below_output,
                                                           below_dbiases, out16), gemm)
        return result

    def _gemm_dinputs_relu_bgrad(self, dvalues: Any, weights: Any, out: Any, below_output: Any,
                                 below_dbiases: Any, mask: Any, out16: Any) -> None:
        """dinputs_relu_bgrad through a GEMM: with cuBLASLt's epilogue or the separate kernels.
        With bfloat16 operands the epilogue writes a bfloat16 ``out16`` itself."""
        def separate() -> None:  # one pass: the ReLU gradient, the bias gradient, any bf16 result
            self.gemm(dvalues, weights, out=out, trans_b=True)
            self.kernels.relu_backward_column_sum(out, below_output, below_dbiases, out16)

        if mask is None:  # the forward pass kept no mask: the separate kernels read the output
            separate()
            return
        result = out16 if dvalues.dtype == BF16_BITS and out16 is not None else out
        fused = self.epilogue_choice.run(
            ("dinputs", dvalues.shape, weights.shape, dvalues.dtype, result.dtype,
             self.tune_gemms),
            lambda: self.epilogues.dinputs_relu_bgrad(dvalues, weights, result, mask,
                                                      below_dbiases, self._tf32, self.tune_gemms),
            separate, self.epilogue_policy, self._tf32)
        if fused and out16 is not None and result is out:
            self.to_bf16(out, out16)

    # ---- a whole small network in one kernel ------------------------------------------------

    def train_in_one_kernel(self, X: Any, y: Any, params: Any, grads: Any, states: list[Any],
                            schedule: Any, totals: Any, epochs: int, rule: tuple[int, float, float],
                            outs: dict[str, Any]) -> None:
        self.kernels.train_in_one_kernel(X, y, params, grads, states, schedule, totals, epochs,
                                         rule, outs)

    # ---- loss -----------------------------------------------------------------------------

    def softmax_cross_entropy(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                              losses: Any, dlogits16: Any = None) -> Any:
        return self.softmax_cross_entropy_totals(logits, labels, probs, dlogits, losses, None,
                                                 dlogits16)

    def softmax_cross_entropy_totals(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                                     losses: Any, totals: Any, dlogits16: Any = None) -> Any:
        if labels.dtype != np.int64:  # the kernel reads 64-bit labels (models always give them)
            labels = labels.astype(np.int64)
        return self.kernels.softmax_cross_entropy(logits, labels, probs, dlogits, losses, totals,
                                                  dlogits16)

    # ---- optimizer updates ------------------------------------------------------------------

    def advance_schedule(self, schedule: Any) -> None:
        self.kernels.advance_schedule(schedule)

    def sgd_update(self, params: Any, grads: Any, momentums: Any, schedule: Any, momentum: float,
                   scratch: Any) -> None:
        self.kernels.sgd_update(params, grads, momentums, schedule, momentum)

    def adagrad_update(self, params: Any, grads: Any, cache: Any, schedule: Any, epsilon: float,
                       scratch: Any) -> None:
        self.kernels.cache_update(params, grads, cache, schedule, epsilon, -1.0)

    def rmsprop_update(self, params: Any, grads: Any, cache: Any, schedule: Any, epsilon: float,
                       rho: float, scratch: Any) -> None:
        self.kernels.cache_update(params, grads, cache, schedule, epsilon, rho)

    def adam_update(self, params: Any, grads: Any, momentums: Any, cache: Any, schedule: Any,
                    epsilon: float, beta_1: float, beta_2: float, scratch: Any) -> None:
        self.kernels.adam_update(params, grads, momentums, cache, schedule, epsilon, beta_1, beta_2)
