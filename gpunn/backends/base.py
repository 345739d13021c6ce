"""The backend interface: every op gpunn's layers, losses and optimizers call, written once over
``self.xp`` (NumPy or CuPy). These plain versions are the reference that faster overrides in
``numpy_backend.py`` and ``cupy_backend.py`` are tested against.

Ops write into ``out`` buffers planned by the caller, so a training step allocates nothing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from . import schedule as slots
from .bf16 import BF16_BITS, round_to_bf16, widen

# Log inputs are clipped to [CLIP, 1 - CLIP], as in the book, so log(0) never happens.
CLIP = 1e-7

PRECISIONS = ("fp32", "tf32", "bf16")
EPILOGUE_POLICIES = ("auto", "always", "never")
#: ``Backend.overlap`` where nothing is put aside: nothing to do on entering or leaving.
_NOTHING_ASIDE = contextlib.nullcontext()
#: What ``Backend.why_not`` answers for.
FEATURES = ("planned_steps", "graphs", "epilogues", "tf32", "bf16", "one_kernel_trainer")


@dataclasses.dataclass(frozen=True)
class Options:
    """How one model runs on its backend. Each compiled model holds a backend of its own with
    these (``Backend.configured``); the device state behind it is shared, the options are not."""

    #: "fp32" (exact float32 GEMMs), "tf32" (tensor cores; GPUs of compute capability 8.0+) or
    #: "bf16" (GEMMs read bfloat16 copies of their operands and accumulate in float32; the same
    #: GPUs). Everything else stays float32: weights, optimizer state, activations, the loss.
    precision: str = "fp32"
    #: cuBLASLt epilogues: "auto" (per problem, whichever measured faster), "always", "never".
    epilogue_policy: str = "auto"
    #: Train Dense -> ReLU -> Dense networks small enough with one kernel launch per many epochs
    #: (on by default on the CuPy and NumPy backends, where it measured faster: on a GPU within
    #: a block's shared memory, on the CPU with numba and up to 16 inputs and classes together).
    one_kernel_trainer: bool = False
    #: Streamed data (``fit`` and the rest on data over the budget): read the next batches into
    #: pinned memory on worker threads, several at once, while the steps are launched (CuPy
    #: backend, on by default there, for batches of 1 MiB or more: smaller ones cost more to
    #: hand over than to read, and are sent several together; see ``transfer.WORKER_MIN_BYTES``
    #: and ``transfer.GROUP_BYTES``).
    upload_thread: bool = False
    #: GEMMs through cuBLASLt with each problem's candidate algorithms timed on its first call
    #: and the fastest kept, and under tf32 each weight gradient timed from a transposed copy of
    #: an operand as well (on by default on the CuPy backend, where it measured faster than
    #: cuBLAS's own choice; the NumPy backend's BLAS chooses for itself).
    tune_gemms: bool = False
    #: A Dense layer with up to 16 outputs (a classifier's output layer) may run its products in
    #: kernels of gpunn's own instead of GEMMs, each where it measured faster on its first call
    #: (on by default on the CuPy backend; the NumPy backend's BLAS takes every product).
    narrow_kernels: bool = False
    #: In a recorded training step, each Dense layer's weight and bias gradients run on a second
    #: stream beside the gradient it hands down, which the layers below wait for and they do not:
    #: a GEMM of medium's size has too few tiles to fill an H200's SMs (CuPy backend; off by
    #: default until it is timed there: ``gpunn bench``'s gpunn-cupy-overlap row).
    overlap_weight_grads: bool = False


#: The options that are on or off (checked to be bools).
SWITCHES = tuple(field.name for field in dataclasses.fields(Options) if field.type == "bool")


def _option(name: str, doc: str) -> property:
    """A backend property for the ``Options`` field ``name``: read from the model's options,
    and set by checking a copy with the new value first (a refused value changes nothing)."""
    def get(self: Backend) -> Any:
        return getattr(self.options, name)

    def set_(self: Backend, value: Any) -> None:
        self.options = self._checked(dataclasses.replace(self.options, **{name: value}))

    return property(get, set_, doc=doc)


class Backend:
    """A complete backend over an array module ``xp``; subclasses override only hot ops."""

    name = "base"
    #: A model's options on this backend until it changes them.
    default_options = Options()

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.options = self.default_options

    def __repr__(self) -> str:
        return f"<gpunn backend {self.name!r}>"

    # ---- what this backend can do, and a model's options on it ----------------------------

    def why_not(self, feature: str, rows: int | None = None,
                sizes: tuple[int, int, int] | None = None, dtype: Any = None) -> str | None:
        """Why ``feature`` (one of FEATURES) cannot run here, or None when it can. For
        "one_kernel_trainer", ``rows``, ``sizes`` (n_in, hidden, k) and ``dtype`` name the problem."""
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {', '.join(map(repr, FEATURES))}; got {feature!r}")
        return {
            "planned_steps": f"the {self.name} backend takes each step as it comes (planned steps pay "
                             f"where they are replayed as device graphs)",
            "graphs": f"the {self.name} backend has no device graphs",
            "epilogues": f"cuBLASLt epilogues need the cupy backend; this is the {self.name} backend",
            "tf32": f"precision 'tf32' needs the cupy backend on a GPU of compute capability 8.0 or "
                    f"newer; the {self.name} backend computes in fp32",
            "bf16": f"precision 'bf16' needs the cupy backend on a GPU of compute capability 8.0 or "
                    f"newer; the {self.name} backend computes in fp32",
            "one_kernel_trainer": f"the {self.name} backend has no one-kernel trainer",
        }[feature]

    def configured(self, **changes: Any) -> Backend:
        """This backend for one model: the same device state, its own ``Options`` (the current
        ones with ``changes``), each checked first."""
        view = copy.copy(self)
        view.options = self._checked(dataclasses.replace(self.options, **changes))
        return view

    def options_set(self) -> dict[str, Any]:
        """The options that differ from this backend's defaults: what a model asked for."""
        return {field.name: getattr(self.options, field.name)
                for field in dataclasses.fields(Options)
                if getattr(self.options, field.name) != getattr(self.default_options, field.name)}

    def _checked(self, options: Options) -> Options:
        if options.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; "
                             f"got {options.precision!r}")
        if options.precision != "fp32" and self.why_not(options.precision):
            raise ValueError(self.why_not(options.precision))
        if options.epilogue_policy not in EPILOGUE_POLICIES:
            raise ValueError(f"epilogue_policy must be one of "
                             f"{', '.join(map(repr, EPILOGUE_POLICIES))}; got {options.epilogue_policy!r}")
        for name in SWITCHES:
            if not isinstance(getattr(options, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {getattr(options, name)!r}")
        return options

    @property
    def precision(self) -> str:
        return self.options.precision

    epilogue_policy = _option(
        "epilogue_policy",
        """"auto": per problem, the cuBLASLt epilogue or the separate kernels, whichever measured
        faster the first time; "always" / "never": one or the other.""")
    one_kernel_trainer = _option(
        "one_kernel_trainer",
        """Whether planned steps of a small Dense -> ReLU -> Dense network run many epochs per
        kernel launch (``train_in_one_kernel``), where ``why_not("one_kernel_trainer", ...)`` allows.""")
    #: The name ``one_kernel_trainer`` had before.
    small_net_kernel = one_kernel_trainer
    upload_thread = _option(
        "upload_thread",
        """Whether streamed batches of 1 MiB or more are read and copied into pinned memory on
        worker threads, several at once (the CuPy backend; elsewhere, and for smaller batches,
        they are read as the steps need them).""")
    tune_gemms = _option(
        "tune_gemms",
        """Whether GEMMs run the fastest of the algorithms cuBLASLt offers for their problem,
        timed on its first call (the CuPy backend; elsewhere the BLAS chooses).""")
    narrow_kernels = _option(
        "narrow_kernels",
        """Whether the products of a Dense layer with up to 16 outputs (its forward, its weight and
        bias gradients, the gradient it hands to a Dense -> ReLU below) may run in gpunn's own
        kernels, each where it measured faster than the GEMM path on its first call (the CuPy
        backend).""")
    overlap_weight_grads = _option(
        "overlap_weight_grads",
        """Whether a recorded training step runs each Dense layer's weight and bias gradients on
        a second stream, beside the gradient handed down (the CuPy backend).""")

    # ---- arrays and data movement -------------------------------------------------------

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Return ``x`` as an array on this backend's device (no copy when it already is one)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Return a NumPy copy of ``x`` that later ops cannot overwrite."""
        return np.array(x, copy=True)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.xp.zeros(shape, dtype=dtype)

    # ---- data too big for the device: streamed from host memory -------------------------

    def free_memory(self) -> float:
        """Bytes free on this backend's device: for the CPU, the physical memory available;
        where the system does not say that (macOS), all its physical memory; inf where it says
        neither (Windows, whose os has no sysconf)."""
        for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
            try:
                return float(os.sysconf(pages) * os.sysconf("SC_PAGESIZE"))
            except (AttributeError, ValueError, OSError):  # not POSIX, or the name is unknown
                continue
        return math.inf

    def data_budget(self) -> float:
        """Bytes of data ``fit``, ``evaluate`` and ``predict`` keep whole on the device before
        they stream it from host memory a batch at a time instead: GPUNN_DATA_BUDGET when set
        (bytes, or with a K, M or G suffix), else half of ``free_memory()``."""
        text = os.environ.get("GPUNN_DATA_BUDGET", "").strip()
        if not text:
            return self.free_memory() / 2
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
        number = text[:-1] if scale > 1 else text
        try:
            value = float(number) * scale
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ValueError(f"GPUNN_DATA_BUDGET must be a number of bytes (K, M or G may follow); "
                             f"got {text!r}")
        return value

    def uploader(self, rows: int, x_tail: tuple[int, ...], x_dtype: Any,
                 y_tail: tuple[int, ...] | None, y_dtype: Any, most_batches: int = 1) -> Any:
        """What moves batches of at most ``rows`` rows (each ``x_tail`` of ``x_dtype``; labels
        ``y_tail`` of ``y_dtype``, None for none) from host memory to this backend's device:
        ``start(read)`` begins a batch, or its ``batches`` consecutive batches together (up to
        ``most_batches``, the data's count; ``read(out)`` gives their host rows x and y or None,
        written into ``out``, the uploader's host buffers, where given), ``finish(ticket)``
        gives their device arrays, ``release(ticket)`` says the steps that used them are queued,
        ``close()`` ends. Here a plain copy, a batch at a time; the CuPy backend's overlaps the
        copies with compute."""
        return HostUploader(self)

    def take_rows(self, x: Any, indices: Any, out: Any) -> Any:
        """Gather the rows ``x[indices]`` into ``out`` (batching with shuffled indices); a
        bfloat16 ``out`` (precision "bf16": the first Dense layer's GEMM operand) gets them
        rounded."""
        if out.dtype == BF16_BITS:
            return round_to_bf16(self.xp, self.xp.take(x, indices, axis=0), out)
        return self.xp.take(x, indices, axis=0, out=out)

    def permutation(self, n: int, rng: np.random.Generator) -> Any:
        """A shuffle order drawn from the host generator, so a seed gives one order everywhere."""
        return self.asarray(rng.permutation(n))

    def all_finite(self, x: Any) -> bool:
        return bool(self.xp.isfinite(x).all())

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    def hold(self, seconds: float) -> None:
        """Keep the device busy for about ``seconds``, so that the work queued next waits and
        the host can queue a whole sequence first (profiling). The CPU runs each op as it is
        called: nothing to do."""

    def capture(self, body: Any) -> Any:
        """Record ``body``'s device work; returns a function that replays it. Only where
        ``why_not("graphs")`` is None."""
        raise RuntimeError(self.why_not("graphs"))

    def overlap(self) -> contextlib.AbstractContextManager[None]:
        """A stretch of work (a network's backward pass) in which ``aside`` may let work run
        beside what follows it; all of it has finished, as far as later work can tell, when the
        stretch ends. Here, as on any backend without streams, work put aside simply runs."""
        return _NOTHING_ASIDE

    def aside(self, work: Callable[[], Any]) -> None:
        """Run ``work``, whose results nothing reads, and whose inputs nothing writes, before
        the ``overlap`` stretch it is in ends: a backend may run it beside the work that follows
        (the CuPy backend, on a second stream). Here it runs now."""
        work()

    # ---- dense layer ----------------------------------------------------------------------

    def gemm(self, a: Any, b: Any, out: Any, trans_a: bool = False, trans_b: bool = False) -> Any:
        """out = op(a) @ op(b), op being a transpose where asked. With bfloat16 operands (precision
        "bf16"), a float32 ``out``: their products are exact in float32, the sums float32's."""
        a, b = (widen(self.xp, m) if m.dtype == BF16_BITS else m for m in (a, b))
        return self.xp.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)

    def to_bf16(self, x: Any, out: Any) -> Any:
        """out (bfloat16 bits) = float32 ``x`` rounded to nearest, ties to even: what the GEMMs of
        a "bf16" model read (bf16.py)."""
        return round_to_bf16(self.xp, x, out)

    def add_bias(self, z: Any, biases: Any) -> Any:
        """z += biases, broadcast over the rows (the book's ``inputs @ weights + biases``)."""
        return self.xp.add(z, biases, out=z)

    def bias_relu(self, z: Any, biases: Any) -> Any:
        """z = max(z + biases, 0) in place: a Dense layer followed by ReLU."""
        self.add_bias(z, biases)
        return self.relu(z, out=z)

    def bias_grad(self, dvalues: Any, out: Any) -> Any:
        """dbiases = the column sums of dvalues."""
        return self.xp.sum(dvalues, axis=0, keepdims=True, out=out)

    def weight_grads(self, inputs: Any, dz: Any, dvalues: Any, dweights: Any, dbiases: Any,
                     scratch: Any = None) -> None:
        """A Dense layer's gradients: dweights = inputs.T @ dz, dz being the GEMM's operand
        (dvalues itself, or under precision "bf16" its bfloat16 copy, as inputs is then), and
        dbiases = the column sums of dvalues, unless None (the layer above wrote them; dvalues
        may be None then). ``scratch(name, shape, dtype)``: a buffer kept with the layer's
        others, for a way of the backend's that needs one (so that a recorded step holds it,
        and it goes when the step does); None: a new array where one is needed."""
        self.gemm(inputs, dz, out=dweights, trans_a=True)
        if dbiases is not None:
            self.bias_grad(dvalues, out=dbiases)

    # Where a backend can fuse them (cuBLASLt epilogues on a GPU), a Dense layer's bias and ReLU
    # ride on its forward GEMM, and the ReLU gradient and bias gradient of a Dense layer below on
    # the GEMM that makes that layer's gradient. These plain versions are the separate ops.

    def relu_mask_shape(self, rows: int, cols: int) -> tuple[int, int] | None:
        """The uint8 buffer in which ``dense_forward`` keeps where a ReLU let values through, for
        ``dinputs_relu_bgrad``; None where the backward reads the layer's output instead."""
        return None

    def dense_forward(self, inputs: Any, weights: Any, biases: Any, out: Any, relu: bool,
                      mask: Any = None, out16: Any = None) -> bool:
        """out = inputs @ weights + biases, then ReLU when ``relu``. Returns whether ``mask``
        (a ``relu_mask_shape`` buffer, or None) was written. ``out16`` (precision "bf16", a layer
        below another Dense layer): the result goes there, rounded to bfloat16, and ``out`` is
        scratch: the GEMM's float32 result where a pass adds the bias (a GPU's reads it and
        writes out16 alone), untouched where a cuBLASLt epilogue writes out16 itself."""
        self.gemm(inputs, weights, out=out)
        if relu:
            self.bias_relu(out, biases)
        else:
            self.add_bias(out, biases)
        if out16 is not None:
            self.to_bf16(out, out16)
        return False

    def dinputs_relu_bgrad(self, dvalues: Any, weights: Any, out: Any, below_output: Any,
                           below_dbiases: Any, mask: Any = None, out16: Any = None) -> Any:
        """The gradient a Dense layer hands to a Dense layer below it whose ReLU was folded in:
        out = dvalues @ weights.T where that layer's ReLU let values through (``below_output``
        > 0, or ``mask`` when ``dense_forward`` wrote one), else 0; ``below_dbiases`` = the column
        sums of out. ``out16`` (precision "bf16", where ``below_output`` is bfloat16 too): the
        result goes there, rounded to bfloat16, as for ``dense_forward`` (``out`` is scratch);
        the bias gradient is float32, summed from the float32 values. Returns the result (out
        or out16)."""
        self.gemm(dvalues, weights, out=out, trans_b=True)
        self.relu_backward(out, below_output, out=out)
        self.bias_grad(out, out=below_dbiases)
        return out if out16 is None else self.to_bf16(out, out16)

    # ---- a whole small network in one kernel (CuPy) ------------------------------------------

    def train_in_one_kernel(self, X: Any, y: Any, params: Any, grads: Any, states: list[Any],
                            schedule: Any, totals: Any, epochs: int, rule: tuple[int, float, float],
                            outs: dict[str, Any]) -> None:
        """``epochs`` planned steps of Dense(n_in, hidden) -> ReLU -> Dense(hidden, k) with
        softmax cross-entropy on (X, y) in one launch: the same updates of params, grads,
        optimizer ``states``, ``schedule`` and ``totals`` rows as ``epochs`` planned steps, and
        the last step's hidden/dhidden/logits/probs/dlogits/losses in ``outs``. ``rule`` is the
        optimizer's ``kernel_rule()``. Only where ``why_not("one_kernel_trainer", ...)`` is None."""
        raise NotImplementedError(self.why_not("one_kernel_trainer"))

    # ---- activations ----------------------------------------------------------------------

    def relu(self, x: Any, out: Any) -> Any:
        return self.xp.maximum(x, 0, out=out)

    def relu_backward(self, dvalues: Any, output: Any, out: Any) -> Any:
        """Gradient passes where the ReLU let the input through (output > 0), else zero. The
        output may be bfloat16 (a hidden layer's under precision "bf16")."""
        if output.dtype == BF16_BITS:
            output = widen(self.xp, output)
        return self.xp.multiply(dvalues, output > 0, out=out)

    def sigmoid(self, x: Any, out: Any) -> Any:
        xp = self.xp
        xp.negative(x, out=out)
        xp.exp(out, out=out)
        xp.add(out, 1, out=out)
        return xp.reciprocal(out, out=out)

    def sigmoid_backward(self, dvalues: Any, output: Any, out: Any) -> Any:
        """d sigmoid = output * (1 - output)."""
        xp = self.xp
        xp.subtract(1, output, out=out)
        xp.multiply(out, output, out=out)
        return xp.multiply(out, dvalues, out=out)

    def softmax(self, x: Any, out: Any) -> Any:
        """Row-wise softmax; the row maximum is subtracted first so exp cannot overflow."""
        xp = self.xp
        xp.subtract(x, x.max(axis=1, keepdims=True), out=out)
        xp.exp(out, out=out)
        return xp.divide(out, out.sum(axis=1, keepdims=True), out=out)

    def softmax_backward(self, dvalues: Any, output: Any, out: Any) -> Any:
        """The softmax Jacobian applied per row: p * (d - sum(d * p))."""
        xp = self.xp
        dot = (dvalues * output).sum(axis=1, keepdims=True)
        xp.subtract(dvalues, dot, out=out)
        return xp.multiply(out, output, out=out)

    def dropout_mask(self, shape: tuple[int, ...], rate: float, rng: np.random.Generator,
                     dtype: Any) -> Any:
        """Keep each unit with probability 1 - rate, scaled by 1 / (1 - rate) (inverted dropout)."""
        keep = rng.random(shape) >= rate
        return self.asarray(keep / (1.0 - rate), dtype=dtype)

    # ---- loss -----------------------------------------------------------------------------

    def softmax_cross_entropy(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                              losses: Any, dlogits16: Any = None) -> Any:
        """Softmax, per-sample loss -log(clip(p[label])) and the fused gradient (p - onehot) / n.
        ``dlogits16`` (precision "bf16"): dlogits rounded to bfloat16 as well, the last Dense
        layer's weight-gradient GEMM operand (a GPU writes it in the same pass)."""
        xp = self.xp
        n = logits.shape[0]
        rows = xp.arange(n)
        self.softmax(logits, out=probs)
        xp.log(xp.clip(probs[rows, labels], CLIP, 1 - CLIP), out=losses)
        xp.negative(losses, out=losses)
        if dlogits is not None:
            xp.copyto(dlogits, probs)
            dlogits[rows, labels] -= 1
            xp.multiply(dlogits, 1.0 / n, out=dlogits)
            if dlogits16 is not None:
                self.to_bf16(dlogits, dlogits16)
        return losses

    def softmax_cross_entropy_totals(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                                     losses: Any, totals: Any, dlogits16: Any = None) -> Any:
        """As softmax_cross_entropy, also adding the loss sum and the correct count into
        ``totals`` (two float64), so epoch metrics stay on the device until the host reads them."""
        self.softmax_cross_entropy(logits, labels, probs, dlogits, losses, dlogits16)
        totals[0] += losses.sum(dtype=np.float64)
        totals[1] += self.count_correct(logits, labels)
        return losses

    def count_correct(self, outputs: Any, labels: Any) -> Any:
        """How many rows have their largest output at the label (a device scalar)."""
        return (outputs.argmax(axis=1) == labels).sum()

    # ---- regularization -------------------------------------------------------------------

    def penalty(self, param: Any, l1: float, l2: float) -> Any:
        """l1 * sum|w| + l2 * sum w^2 (a device scalar)."""
        xp = self.xp
        total = 0.0
        if l1:
            total = total + l1 * xp.abs(param).sum()
        if l2:
            total = total + l2 * (param * param).sum()
        return total

    def penalty_grad(self, dparam: Any, param: Any, l1: float, l2: float) -> Any:
        """dparam += l1 * sign(w) + 2 * l2 * w, the gradient of ``penalty``."""
        xp = self.xp
        if l1:
            dparam += l1 * xp.sign(param)
        if l2:
            dparam += (2 * l2) * param
        return dparam

    # ---- optimizer updates, each over whole (flat) buffers ---------------------------------
    # Every rule reads the step's learning rate (and Adam its step count) from ``schedule``, the
    # device array of schedule.py's slots, which ``advance_schedule`` moves on first: a replayed
    # CUDA graph then applies decay and bias correction without the host.

    def new_schedule(self, values: list[float]) -> Any:
        """A schedule holding ``values`` (schedule.py's slots) where the update ops read it: a
        float64 array on the device."""
        return self.asarray(np.array(values, dtype=np.float64))

    def advance_schedule(self, schedule: Any) -> None:
        """lr_t = lr / (1 + decay * t), Adam's corrections for step t + 1, then t += 1."""
        slots.advance(schedule)

    def sgd_update(self, params: Any, grads: Any, momentums: Any, schedule: Any, momentum: float,
                   scratch: Any) -> None:
        """Plain: w -= lr_t * g. With momentum (the book's form): u = momentum*u - lr_t*g; w += u."""
        xp, lr = self.xp, float(schedule[slots.LR_T])
        if momentums is None:
            xp.multiply(grads, -lr, out=scratch)
            xp.add(params, scratch, out=params)
            return
        xp.multiply(momentums, momentum, out=momentums)
        xp.multiply(grads, lr, out=scratch)
        xp.subtract(momentums, scratch, out=momentums)
        xp.add(params, momentums, out=params)

    def adagrad_update(self, params: Any, grads: Any, cache: Any, schedule: Any, epsilon: float,
                       scratch: Any) -> None:
        """cache += g^2; w -= lr_t * g / (sqrt(cache) + eps)."""
        xp = self.xp
        xp.multiply(grads, grads, out=scratch)
        xp.add(cache, scratch, out=cache)
        self._scaled_step(params, grads, cache, float(schedule[slots.LR_T]), epsilon, scratch)

    def rmsprop_update(self, params: Any, grads: Any, cache: Any, schedule: Any, epsilon: float,
                       rho: float, scratch: Any) -> None:
        """cache = rho*cache + (1-rho)*g^2; w -= lr_t * g / (sqrt(cache) + eps)."""
        xp = self.xp
        xp.multiply(grads, grads, out=scratch)
        xp.multiply(scratch, 1 - rho, out=scratch)
        xp.multiply(cache, rho, out=cache)
        xp.add(cache, scratch, out=cache)
        self._scaled_step(params, grads, cache, float(schedule[slots.LR_T]), epsilon, scratch)

    def adam_update(self, params: Any, grads: Any, momentums: Any, cache: Any, schedule: Any,
                    epsilon: float, beta_1: float, beta_2: float, scratch: Any) -> None:
        """Adam with bias correction, for step t = the schedule's (already advanced) ITERATIONS.

        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
        w -= lr_t * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        """
        xp = self.xp
        lr, step = float(schedule[slots.LR_T]), int(round(float(schedule[slots.ITERATIONS])))
        xp.multiply(momentums, beta_1, out=momentums)
        xp.multiply(grads, 1 - beta_1, out=scratch)
        xp.add(momentums, scratch, out=momentums)
        xp.multiply(grads, grads, out=scratch)
        xp.multiply(scratch, 1 - beta_2, out=scratch)
        xp.multiply(cache, beta_2, out=cache)
        xp.add(cache, scratch, out=cache)
        # sqrt(v_hat) + eps, then m_hat divided by it, scaled by -lr.
        xp.multiply(cache, 1.0 / (1 - beta_2**step), out=scratch)
        xp.sqrt(scratch, out=scratch)
        xp.add(scratch, epsilon, out=scratch)
        xp.divide(momentums, scratch, out=scratch)
        xp.multiply(scratch, -lr / (1 - beta_1**step), out=scratch)
        xp.add(params, scratch, out=params)

    def _scaled_step(self, params: Any, grads: Any, cache: Any, lr: float, epsilon: float,
                     scratch: Any) -> None:
        """w -= lr * g / (sqrt(cache) + eps), shared by Adagrad and RMSprop."""
        xp = self.xp
        xp.sqrt(cache, out=scratch)
        xp.add(scratch, epsilon, out=scratch)
        xp.divide(grads, scratch, out=scratch)
        xp.multiply(scratch, -lr, out=scratch)
        xp.add(params, scratch, out=params)


class HostUploader:
    """Batches to the device as plain copies (on the CPU, no copy: the batch is already there)."""

    ahead = 1  # starts made before the first of them is handed over
    batches = 1  # batches a start carries: on the CPU nothing is shared by carrying more

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def start(self, read: Any) -> tuple[Any, Any]:
        x, y = read(None)  # new arrays (on the CPU, a slice of the data is not even copied)
        return self.backend.asarray(x), None if y is None else self.backend.asarray(y)

    def finish(self, ticket: tuple[Any, Any]) -> tuple[Any, Any]:
        return ticket

    def release(self, ticket: tuple[Any, Any]) -> None:
        pass

    def close(self) -> None:
        pass
