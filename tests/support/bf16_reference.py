"""Precision "bf16" written out in plain NumPy, with ml_dtypes doing the rounding: the reference the
layers' bf16 path (on NumPy and on the CUDA kernels run on the CPU) is checked against.

Where the GPU path rounds to bfloat16, so does this: each GEMM's two operands (the layer's inputs
and weights going forward; its inputs, incoming gradient and weights going back). The GEMMs sum
in float32; everything else (bias, ReLU, softmax cross-entropy, the bias gradient, Adam, the
weights themselves) is float32. A hidden layer's output is kept only in bfloat16, so the ReLU's
gradient passes where that rounding is positive (which differs from the float32 value's sign
only below bfloat16's smallest subnormal).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np


def bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16 (to nearest, ties to even), as float32 again."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def forward(params: list[np.ndarray], X: np.ndarray) -> list[np.ndarray]:
    """Each Dense layer's float32 output, of Dense -> ReLU -> ... -> Dense (params: W1, b1, W2,
    b2, ...; biases (1, k)) on X; the hidden ones after their ReLU. The GPU path keeps the hidden
    ones only rounded to bfloat16 (the next GEMM's operand)."""
    layers = len(params) // 2
    outputs = []
    a = X.astype(np.float32)
    for i in range(layers):
        W, b = params[2 * i], params[2 * i + 1]
        z = bf16(a) @ bf16(W) + b
        a = np.maximum(z, 0) if i < layers - 1 else z
        outputs.append(a)
    return outputs


def step(params: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float]:
    """Gradients of the mean softmax cross-entropy of Dense -> ReLU -> ... -> Dense (params: W1,
    b1, W2, b2, ...; biases (1, k)) on (X, y), and the loss."""
    n = X.shape[0]
    layers = len(params) // 2
    outputs = forward(params, X)
    inputs = [X.astype(np.float32), *outputs[:-1]]
    logits = outputs[-1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(-np.log(np.clip(p[rows, y], 1e-7, 1 - 1e-7)).mean())
    d = p.copy()
    d[rows, y] -= 1
    d *= np.float32(1.0 / n)
    grads: list[np.ndarray] = [None] * len(params)  # type: ignore[list-item]
    for i in reversed(range(layers)):
        W = params[2 * i]
        d16 = bf16(d)
        grads[2 * i] = bf16(inputs[i]).T @ d16
        grads[2 * i + 1] = d.sum(axis=0, keepdims=True)
        if i:
            d = (d16 @ bf16(W).T) * (bf16(outputs[i - 1]) > 0)  # the ReLU read from bf16
    return grads, loss


def train_adam(params: list[np.ndarray], X: np.ndarray, y: np.ndarray, steps: int, lr: float,
               beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> list[float]:
    """``steps`` full-batch Adam steps (the book's Adam, no decay) on float32 ``params`` in place;
    the losses before each."""
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    losses = []
    for t in range(1, steps + 1):
        grads, loss = step(params, X, y)
        losses.append(loss)
        for p, g, mi, vi in zip(params, grads, m, v):
            mi[...] = beta_1 * mi + (1 - beta_1) * g
            vi[...] = beta_2 * vi + (1 - beta_2) * g * g
            p -= np.float32(lr) * (mi / (1 - beta_1**t)) / (np.sqrt(vi / (1 - beta_2**t)) + epsilon)
    return losses
