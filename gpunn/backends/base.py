"""The backend interface: every op gpunn's layers, losses and optimizers call, written once over
``self.xp`` (NumPy or CuPy). These plain versions are the reference that faster overrides in
``numpy_backend.py`` and ``cupy_backend.py`` are tested against.

Ops write into ``out`` buffers planned by the caller, so a training step allocates nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Log inputs are clipped to [CLIP, 1 - CLIP], as in the book, so log(0) never happens.
CLIP = 1e-7


class Backend:
    """A complete backend over an array module ``xp``; subclasses override only hot ops."""

    name = "base"

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def __repr__(self) -> str:
        return f"<gpunn backend {self.name!r}>"

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

    def take_rows(self, x: Any, indices: Any, out: Any) -> Any:
        """Gather the rows ``x[indices]`` into ``out`` (batching with shuffled indices)."""
        return self.xp.take(x, indices, axis=0, out=out)

    def permutation(self, n: int, rng: np.random.Generator) -> Any:
        """A shuffle order drawn from the host generator, so a seed gives one order everywhere."""
        return self.asarray(rng.permutation(n))

    def all_finite(self, x: Any) -> bool:
        return bool(self.xp.isfinite(x).all())

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    #: Whether ``fit`` should plan steps (static buffers, device schedule) and replay them.
    plans_steps = False

    def capture(self, body: Any) -> Any:
        """Record ``body``'s device work for replay; returns a function that replays it, or None
        where this backend has no graphs (the caller then runs ``body`` itself each time)."""
        return None

    def set_precision(self, precision: str) -> None:
        """Use "fp32" (exact float32 GEMMs) or "tf32" (tensor cores; GPUs only) from now on."""
        if precision != "fp32":
            raise ValueError(f"precision {precision!r} needs the cupy backend on a GPU of compute "
                             f"capability 8.0 or newer; the {self.name} backend computes in fp32")

    # ---- dense layer ----------------------------------------------------------------------

    def gemm(self, a: Any, b: Any, out: Any, trans_a: bool = False, trans_b: bool = False) -> Any:
        """out = op(a) @ op(b), op being a transpose where asked."""
        return self.xp.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)

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

    # Where a backend can fuse them (cuBLASLt epilogues on a GPU), a Dense layer's bias and ReLU
    # ride on its forward GEMM, and the ReLU gradient and bias gradient of a Dense layer below on
    # the GEMM that makes that layer's gradient. These plain versions are the separate ops.

    def relu_mask_shape(self, rows: int, cols: int) -> tuple[int, int] | None:
        """The uint8 buffer in which ``dense_forward`` keeps where a ReLU let values through, for
        ``dinputs_relu_bgrad``; None where the backward reads the layer's output instead."""
        return None

    def dense_forward(self, inputs: Any, weights: Any, biases: Any, out: Any, relu: bool,
                      mask: Any = None) -> bool:
        """out = inputs @ weights + biases, then ReLU when ``relu``. Returns whether ``mask``
        (a ``relu_mask_shape`` buffer, or None) was written."""
        self.gemm(inputs, weights, out=out)
        if relu:
            self.bias_relu(out, biases)
        else:
            self.add_bias(out, biases)
        return False

    def dinputs_relu_bgrad(self, dvalues: Any, weights: Any, out: Any, below_output: Any,
                           below_dbiases: Any, mask: Any = None) -> Any:
        """The gradient a Dense layer hands to a Dense layer below it whose ReLU was folded in:
        out = dvalues @ weights.T where that layer's ReLU let values through (``below_output``
        > 0, or ``mask`` when ``dense_forward`` wrote one), else 0; ``below_dbiases`` = the column
        sums of out."""
        self.gemm(dvalues, weights, out=out, trans_b=True)
        self.relu_backward(out, below_output, out=out)
        self.bias_grad(out, out=below_dbiases)
        return out

    # ---- a whole small network in one kernel (CuPy) ------------------------------------------

    def fits_small_net(self, rows: int, sizes: tuple[int, int, int], dtype: Any) -> bool:
        """Whether ``train_small_net`` can train Dense(n_in, hidden) -> ReLU -> Dense(hidden, k),
        ``sizes`` = (n_in, hidden, k), on ``rows`` samples here (and is switched on)."""
        return False

    def train_small_net(self, X: Any, y: Any, params: Any, grads: Any, states: list[Any],
                        schedule: Any, totals: Any, epochs: int, rule: tuple[int, float, float],
                        outs: dict[str, Any]) -> None:
        """``epochs`` planned steps of that network on (X, y) at once: the same updates of
        params, grads, optimizer ``states``, ``schedule`` and ``totals`` rows as ``epochs``
        planned steps, and the last step's hidden/dhidden/logits/probs/dlogits/losses in
        ``outs``. ``rule`` is the optimizer's ``kernel_rule()``."""
        raise NotImplementedError(f"the {self.name} backend has no one-kernel trainer")

    # ---- activations ----------------------------------------------------------------------

    def relu(self, x: Any, out: Any) -> Any:
        return self.xp.maximum(x, 0, out=out)

    def relu_backward(self, dvalues: Any, output: Any, out: Any) -> Any:
        """Gradient passes where the ReLU let the input through (output > 0), else zero."""
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
                              losses: Any) -> Any:
        """Softmax, per-sample loss -log(clip(p[label])) and the fused gradient (p - onehot) / n."""
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
        return losses

    def softmax_cross_entropy_totals(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                                     losses: Any, totals: Any) -> Any:
        """As softmax_cross_entropy, also adding the loss sum and the correct count into
        ``totals`` (two float64), so epoch metrics stay on the device until the host reads them."""
        self.softmax_cross_entropy(logits, labels, probs, dlogits, losses)
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

    def sgd_update(self, params: Any, grads: Any, momentums: Any, lr: float, momentum: float,
                   scratch: Any) -> None:
        """Plain: w -= lr * g. With momentum (the book's form): u = momentum*u - lr*g; w += u."""
        xp = self.xp
        if momentums is None:
            xp.multiply(grads, -lr, out=scratch)
            xp.add(params, scratch, out=params)
            return
        xp.multiply(momentums, momentum, out=momentums)
        xp.multiply(grads, lr, out=scratch)
        xp.subtract(momentums, scratch, out=momentums)
        xp.add(params, momentums, out=params)

    def adagrad_update(self, params: Any, grads: Any, cache: Any, lr: float, epsilon: float,
                       scratch: Any) -> None:
        """cache += g^2; w -= lr * g / (sqrt(cache) + eps)."""
        xp = self.xp
        xp.multiply(grads, grads, out=scratch)
        xp.add(cache, scratch, out=cache)
        self._scaled_step(params, grads, cache, lr, epsilon, scratch)

    def rmsprop_update(self, params: Any, grads: Any, cache: Any, lr: float, epsilon: float,
                       rho: float, scratch: Any) -> None:
        """cache = rho*cache + (1-rho)*g^2; w -= lr * g / (sqrt(cache) + eps)."""
        xp = self.xp
        xp.multiply(grads, grads, out=scratch)
        xp.multiply(scratch, 1 - rho, out=scratch)
        xp.multiply(cache, rho, out=cache)
        xp.add(cache, scratch, out=cache)
        self._scaled_step(params, grads, cache, lr, epsilon, scratch)

    def adam_update(self, params: Any, grads: Any, momentums: Any, cache: Any, lr: float,
                    epsilon: float, beta_1: float, beta_2: float, step: int, scratch: Any) -> None:
        """Adam with bias correction; ``step`` counts from 1.

        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
        w -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)
        """
        xp = self.xp
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

    # ---- the same updates, with the learning rate schedule kept in a device array ----------
    # schedule = [iterations, lr, decay, beta_1, beta_2, lr_t, 1/(1-beta_1^t), 1/(1-beta_2^t)]:
    # a replayed CUDA graph reads lr_t and the bias corrections from it, and advance_schedule
    # (part of the graph) moves it on, so decay and bias correction stay right without the host.

    def advance_schedule(self, schedule: Any) -> None:
        """lr_t = lr / (1 + decay * iterations), Adam's corrections for step iterations + 1,
        then iterations += 1 (the book's pre_update_params and post_update_params)."""
        iterations, lr, decay, beta_1, beta_2 = (float(v) for v in schedule[:5])
        step = iterations + 1
        schedule[5] = lr / (1.0 + decay * iterations)
        schedule[6] = 1.0 / (1.0 - beta_1**step)
        schedule[7] = 1.0 / (1.0 - beta_2**step)
        schedule[0] = step

    def sgd_update_scheduled(self, params: Any, grads: Any, momentums: Any, schedule: Any,
                             momentum: float, scratch: Any) -> None:
        self.sgd_update(params, grads, momentums, float(schedule[5]), momentum, scratch)

    def cache_update_scheduled(self, params: Any, grads: Any, cache: Any, schedule: Any,
                               epsilon: float, rho: float, scratch: Any) -> None:
        """Adagrad (rho < 0) or RMSprop (0 <= rho < 1)."""
        if rho < 0:
            self.adagrad_update(params, grads, cache, float(schedule[5]), epsilon, scratch)
        else:
            self.rmsprop_update(params, grads, cache, float(schedule[5]), epsilon, rho, scratch)

    def adam_update_scheduled(self, params: Any, grads: Any, momentums: Any, cache: Any,
                              schedule: Any, epsilon: float, beta_1: float, beta_2: float,
                              scratch: Any) -> None:
        step = int(round(float(schedule[0])))
        self.adam_update(params, grads, momentums, cache, float(schedule[5]), epsilon, beta_1,
                         beta_2, step, scratch)

    def _scaled_step(self, params: Any, grads: Any, cache: Any, lr: float, epsilon: float,
                     scratch: Any) -> None:
        """w -= lr * g / (sqrt(cache) + eps), shared by Adagrad and RMSprop."""
        xp = self.xp
        xp.sqrt(cache, out=scratch)
        xp.add(scratch, epsilon, out=scratch)
        xp.divide(grads, scratch, out=scratch)
        xp.multiply(scratch, -lr, out=scratch)
        xp.add(params, scratch, out=params)
