"""The one-kernel trainer on the CPU: Dense(n_in, hidden) -> ReLU -> Dense(hidden, k) with softmax
cross-entropy, ``epochs`` optimizer steps on one batch in one call of code compiled by numba. The
CPU sibling of kernels.cu's ``train_in_one_kernel``, with the same rules.

Why it is faster than NumPy for the book's network: a NumPy step is about twenty calls, each
a few microseconds of overhead around very little arithmetic (300 x 64 values), and the data
passes through memory between them. Here each sample goes through the whole step while its
hidden row (64 values) sits in registers and L1: the forward pass, the softmax, the gradient of
each layer added into the sums, loops over the hidden units that the compiler vectorises. The
epoch then ends with the update over the flat parameters. For a few inputs and classes (the
book's 2 and 3) those loops are written out for the network's sizes: one pass over the hidden
units forward and one backward, each input and class a scalar of its own (measured on the book's
run: 0.36 s with the plain loops, 0.27 s written out).

The sums over samples run in sample order (BLAS blocks them differently), and sums along a row
may be reassociated to vectorise them (``REASSOCIATE``), so the numbers agree with the NumPy
path's to rounding, not bit for bit; a run gives the same bits every time. NaN and infinity keep
their meaning (no "fast" math that assumes them away), so a diverging run is caught as it is on
the NumPy path.

numba is optional (``pip install "gpunn[jit]"``); without it the NumPy backend takes its usual
steps and ``why_not`` says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import schedule as slots

try:
    import numba
except ImportError as exc:  # the NumPy backend's own steps then
    numba = None
    WHY_NOT: str | None = f'needs numba (pip install "gpunn[jit]"; {exc})'
else:
    WHY_NOT = None

#: LLVM's fast-math flags allowed: reassociating sums (to vectorise them), fused multiply-adds,
#: and -0 treated as 0. Not "nnan"/"ninf": those would let the compiler drop NaN checks.
REASSOCIATE = {"reassoc", "contract", "nsz"}


def train(X: np.ndarray, y: np.ndarray, params: np.ndarray, grads: np.ndarray,
          states: list[np.ndarray], schedule: Any, totals: np.ndarray, epochs: int,
          rule: tuple[int, float, float], outs: dict[str, np.ndarray]) -> None:
    """What ``Backend.train_in_one_kernel`` promises, for NumPy arrays (``schedule`` a list or
    array of schedule.py's slots, moved on in place)."""
    code, hyper, epsilon = rule
    sched = np.array(schedule, dtype=np.float64)
    state_1 = states[0] if states else params  # unused by the rules that keep no state
    state_2 = states[1] if len(states) > 1 else params
    trainer = _compiled(X.shape[1], outs["logits"].shape[1])
    trainer(X, y.astype(np.int64, copy=False), params, grads, state_1, state_2, sched, totals,
            epochs, code, hyper, epsilon, outs["hidden"], outs["dhidden"], outs["logits"],
            outs["probs"], outs["dlogits"], outs["losses"].reshape(-1))
    schedule[:] = sched.tolist() if isinstance(schedule, list) else sched


#: Below these sizes (inputs, classes) a network's per-sample loops are written out for it
#: (``_rows_source``): one pass over the hidden units forward and one backward, each input and
#: class a named scalar. Larger ones take the plain loops (``_forward_row``, ``_backward_row``).
UNROLL_INPUTS, UNROLL_CLASSES = 16, 16

_trainers: dict[tuple[int, int], Any] = {}


def _compiled(n_in: int, k: int) -> Any:
    """The compiled trainer for ``n_in`` inputs and ``k`` classes (numba compiles it on first
    use, once per dtype)."""
    if numba is None:
        raise RuntimeError(f"the CPU one-kernel trainer {WHY_NOT}")
    key = (n_in, k) if n_in <= UNROLL_INPUTS and k <= UNROLL_CLASSES else (0, 0)
    if key not in _trainers:
        if key == (0, 0):
            forward_row, backward_row = _inlined(_forward_row), _inlined(_backward_row)
        else:
            namespace: dict[str, Any] = {}
            exec(compile(_rows_source(n_in, k), f"<gpunn.backends.jit rows {n_in}x{k}>", "exec"),
                 namespace)
            forward_row = _inlined(namespace["forward_row"])
            backward_row = _inlined(namespace["backward_row"])
        _trainers[key] = _jit(_trainer(forward_row, backward_row))
    return _trainers[key]


def _jit(function: Any) -> Any:
    return numba.njit(fastmath=REASSOCIATE, nogil=True)(function)


def _inlined(function: Any) -> Any:
    """Compiled into its caller (numba inlines it before LLVM sees the code), so its loops run
    on the caller's arrays, known not to overlap."""
    return numba.njit(fastmath=REASSOCIATE, inline="always")(function)


def _forward_row(x, W1, b1, W2T, b2, h, z, zero):
    """One sample forward: h = relu(x @ W1 + b1); z = h @ W2 + b2 (W2T: W2 by columns)."""
    for j in range(h.size):
        h[j] = b1[j]
    for c in range(x.size):
        for j in range(h.size):
            h[j] += x[c] * W1[c, j]
    for j in range(h.size):
        if h[j] < zero:  # a NaN goes through, as np.maximum lets it
            h[j] = zero
    for c in range(z.size):
        s = zero
        for j in range(h.size):
            s += h[j] * W2T[c, j]
        z[c] = s + b2[c]


def _backward_row(x, h, d, W2T, dW1, db1, dW2T, dh, zero):
    """One sample's gradients added in: dW2 += h^T d; dh = d @ W2^T where the ReLU let h
    through; db1 += dh; dW1 += x^T dh."""
    for j in range(h.size):
        dh[j] = zero
    for c in range(d.size):
        for j in range(h.size):
            dW2T[c, j] += d[c] * h[j]
        for j in range(h.size):
            dh[j] += d[c] * W2T[c, j]
    for j in range(h.size):
        if not h[j] > zero:
            dh[j] = zero
        db1[j] += dh[j]
    for c in range(x.size):
        for j in range(h.size):
            dW1[c, j] += x[c] * dh[j]


def _rows_source(n_in: int, k: int) -> str:
    """``forward_row`` and ``backward_row`` (as above, the same sums in the same order) for
    ``n_in`` inputs and ``k`` classes, each written as one loop over the hidden units."""
    xs, cs = range(n_in), range(k)
    x_names = "".join(f"    x{c} = x[{c}]\n" for c in xs)
    d_names = "".join(f"    d{c} = d[{c}]\n" for c in cs)
    return (
        "def forward_row(x, W1, b1, W2T, b2, h, z, zero):\n" + x_names
        + "".join(f"    z{c} = zero\n" for c in cs)
        + "    for j in range(h.size):\n"
        + "        a = b1[j]" + "".join(f" + x{c} * W1[{c}, j]" for c in xs) + "\n"
        + "        if a < zero:\n            a = zero\n"
        + "        h[j] = a\n"
        + "".join(f"        z{c} += a * W2T[{c}, j]\n" for c in cs)
        + "".join(f"    z[{c}] = z{c} + b2[{c}]\n" for c in cs)
        + "\n\ndef backward_row(x, h, d, W2T, dW1, db1, dW2T, dh, zero):\n" + x_names + d_names
        + "    for j in range(h.size):\n"
        + "        hj = h[j]\n"
        + "        g = zero" + "".join(f" + d{c} * W2T[{c}, j]" for c in cs) + "\n"
        + "".join(f"        dW2T[{c}, j] += d{c} * hj\n" for c in cs)
        + "        if not hj > zero:\n            g = zero\n"
        + "        dh[j] = g\n"
        + "        db1[j] += g\n"
        + "".join(f"        dW1[{c}, j] += x{c} * g\n" for c in xs))


def _softmax_cross_entropy_row(z, label, p, d, typed):
    """One sample's softmax p, its clipped log loss and d = (p - onehot) / n; returns the loss and
    the first index of the largest output. ``typed``: 0, 1, 1 / n and the clip's ends."""
    zero, one, inv_n, clip_low, clip_high = typed[0], typed[1], typed[2], typed[3], typed[4]
    best = 0
    for c in range(1, z.size):
        if z[c] > z[best]:
            best = c
    top = z[best]
    total = zero
    for c in range(z.size):
        p[c] = math.exp(z[c] - top)
        total += p[c]
    for c in range(z.size):
        p[c] = p[c] / total
    p_true = p[label]  # clipped (a NaN stays one)
    if p_true < clip_low:
        p_true = clip_low
    elif p_true > clip_high:
        p_true = clip_high
    for c in range(z.size):
        d[c] = (p[c] - (one if c == label else zero)) * inv_n
    return -math.log(p_true), best


def _trainer(forward_row: Any, backward_row: Any) -> Any:
    """The trainer around one sample's forward and backward loops."""
    softmax_cross_entropy_row = _inlined(_softmax_cross_entropy_row)

    def train(X, y, params, grads, state_1, state_2, schedule, totals, epochs, code, hyper,
              epsilon, hidden, dhidden, logits, probs, dlogits, losses):
        """Plain Python, compiled by numba: per epoch, every sample through the whole step,
        then the schedule advanced and the rule applied to every parameter (kernels.cu's
        sgd_rule, cache_rule and adam_rule)."""
        n, n_in = X.shape
        width = hidden.shape[1]
        k = logits.shape[1]
        o1 = n_in * width
        o2 = o1 + width
        o3 = o2 + width * k
        W1, b1 = params[:o1].reshape(n_in, width), params[o1:o2]
        W2, b2 = params[o2:o3].reshape(width, k), params[o3:]
        dW2 = grads[o2:o3].reshape(width, k)
        typed = np.empty(5, X.dtype)  # constants in the model's dtype: 0, 1, 1 / n and the clip
        typed[0], typed[1], typed[2], typed[3], typed[4] = 0.0, 1.0, 1.0 / n, 1e-7, 1 - 1e-7
        zero = typed[0]
        scalars = np.empty(8, X.dtype)  # the rule's, per epoch
        W2T = np.empty((k, width), X.dtype)  # W2 by columns: the loops over hidden units run along rows
        # The gradient sums and one sample's rows in arrays of their own, which the compiler
        # knows alias nothing (so it vectorises the loops over them); copied out once.
        dW1, db1 = np.empty((n_in, width), X.dtype), np.empty(width, X.dtype)
        dW2T, db2 = np.empty((k, width), X.dtype), np.empty(k, X.dtype)
        x, h, dh = np.empty(n_in, X.dtype), np.empty(width, X.dtype), np.empty(width, X.dtype)
        z, p, d = np.empty(k, X.dtype), np.empty(k, X.dtype), np.empty(k, X.dtype)
        for epoch in range(epochs):
            for c in range(k):
                for j in range(width):
                    W2T[c, j] = W2[j, c]
            dW1[:] = zero
            db1[:] = zero
            dW2T[:] = zero
            db2[:] = zero
            loss_sum = 0.0
            correct = 0
            last = epoch == epochs - 1
            for i in range(n):
                x[:] = X[i]
                forward_row(x, W1, b1, W2T, b2, h, z, zero)
                label = y[i]
                loss, best = softmax_cross_entropy_row(z, label, p, d, typed)
                loss_sum += loss
                correct += best == label
                for c in range(k):
                    db2[c] += d[c]
                backward_row(x, h, d, W2T, dW1, db1, dW2T, dh, zero)
                if last:
                    hidden[i, :], dhidden[i, :] = h, dh
                    logits[i, :], probs[i, :], dlogits[i, :] = z, p, d
                    losses[i] = loss
            grads[:o1] = dW1.ravel()
            grads[o1:o2] = db1
            for c in range(k):
                for j in range(width):
                    dW2[j, c] = dW2T[c, j]
            grads[o3:] = db2
            totals[epoch, 0] += loss_sum
            totals[epoch, 1] += correct
            _advance(schedule)
            _update(params, grads, state_1, state_2, schedule, code, hyper, epsilon, scalars)

    return train


def _advance(schedule):
    """schedule.advance, compiled."""
    iterations = schedule[slots.ITERATIONS]
    step = iterations + 1.0
    schedule[slots.LR_T] = schedule[slots.LR] / (1.0 + schedule[slots.DECAY] * iterations)
    schedule[slots.CORRECTION_1] = 1.0 / (1.0 - schedule[slots.BETA_1] ** step)
    schedule[slots.CORRECTION_2] = 1.0 / (1.0 - schedule[slots.BETA_2] ** step)
    schedule[slots.ITERATIONS] = step


def _update(params, grads, state_1, state_2, schedule, code, hyper, epsilon, scalars):
    """One rule over every parameter, as kernels.cu's rules compute it: in the model's dtype
    (``scalars``, of that dtype, converts the float64 settings as the kernels' casts do)."""
    scalars[0] = schedule[slots.LR_T]
    lr = scalars[0]
    if code == slots.RULE_SGD:
        for q in range(params.size):
            params[q] -= lr * grads[q]
    elif code == slots.RULE_SGD_MOMENTUM:
        scalars[1] = hyper
        momentum = scalars[1]
        for q in range(params.size):
            u = momentum * state_1[q] - lr * grads[q]
            state_1[q] = u
            params[q] += u
    elif code == slots.RULE_CACHE:
        scalars[1], scalars[2], scalars[3] = hyper, 1 - hyper, epsilon
        rho, rest, eps = scalars[1], scalars[2], scalars[3]
        for q in range(params.size):
            g = grads[q]
            c = state_1[q] + g * g if hyper < 0 else rho * state_1[q] + rest * g * g
            state_1[q] = c
            params[q] -= lr * g / (math.sqrt(c) + eps)
    else:
        beta_1, beta_2 = schedule[slots.BETA_1], schedule[slots.BETA_2]
        scalars[1], scalars[2], scalars[3], scalars[4] = beta_1, 1 - beta_1, beta_2, 1 - beta_2
        scalars[5], scalars[6] = schedule[slots.CORRECTION_1], schedule[slots.CORRECTION_2]
        scalars[7] = epsilon
        b1, r1, b2, r2 = scalars[1], scalars[2], scalars[3], scalars[4]
        correct_1, correct_2, eps = scalars[5], scalars[6], scalars[7]
        for q in range(params.size):
            g = grads[q]
            m = b1 * state_1[q] + r1 * g
            v = b2 * state_2[q] + r2 * g * g
            state_1[q] = m
            state_2[q] = v
            params[q] -= lr * (m * correct_1) / (math.sqrt(v * correct_2) + eps)


if numba is not None:  # the helpers are called from compiled code, so compiled too
    _advance = numba.njit(fastmath=REASSOCIATE)(_advance)
    _update = numba.njit(fastmath=REASSOCIATE)(_update)
