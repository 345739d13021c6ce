"""Losses: analytic gradients against central differences (float64, every backend), the fused
softmax cross-entropy against softmax then cross-entropy, clipping, one-hot labels."""

from __future__ import annotations

import numpy as np
import pytest
from support.gradients import assert_close, numerical_grad, to_host

import gpunn as nn

LOSS_CASES = {
    "softmax-cross-entropy": (nn.SoftmaxCrossEntropy, None, "labels"),
    "categorical-cross-entropy": (nn.CategoricalCrossEntropy, "softmax", "labels"),
    "binary-cross-entropy": (nn.BinaryCrossEntropy, "sigmoid", "binary"),
    "mean-squared-error": (nn.MeanSquaredError, None, "real"),
}


@pytest.mark.parametrize("case", LOSS_CASES)
def test_loss_gradients(case, bk, rng):
    make, squash, kind = LOSS_CASES[case]
    loss = make()
    loss.move_to(bk)
    n, k = 7, 4
    z = rng.standard_normal((n, k))
    if squash == "softmax":
        z = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    elif squash == "sigmoid":
        z = 1 / (1 + np.exp(-z))
    y = {"labels": rng.integers(0, k, n), "binary": rng.integers(0, 2, (n, k)).astype(float),
         "real": rng.standard_normal((n, k))}[kind]
    yd = bk.asarray(y)

    def f():
        return float(to_host(loss.sample_losses(bk.asarray(z), yd)).mean())

    losses = loss.train(bk.asarray(z), yd)
    assert np.isclose(float(to_host(losses).mean()), f())
    assert_close(loss.dinputs, numerical_grad(f, z), f"{case} dinputs")


def test_fused_softmax_cross_entropy_equals_softmax_then_cce(rng):
    logits = rng.standard_normal((11, 5))
    y = rng.integers(0, 5, 11)
    fused = nn.SoftmaxCrossEntropy()
    fused.train(logits, y)
    softmax, cce = nn.Softmax(), nn.CategoricalCrossEntropy()
    softmax.forward(logits)
    chained_losses = cce.forward(softmax.output, y)
    cce.backward(softmax.output, y)
    softmax.backward(cce.dinputs)
    np.testing.assert_allclose(fused.dinputs, softmax.dinputs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fused.sample_losses(logits, y), chained_losses, rtol=1e-12)
    # the book's combined class: backward from the softmax output
    fused.forward(logits, y)
    np.testing.assert_allclose(fused.backward(fused.output, y), softmax.dinputs, rtol=1e-10,
                               atol=1e-12)


def test_clipping_keeps_the_loss_finite():
    cce = nn.CategoricalCrossEntropy()
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    losses = cce.forward(p, np.array([1, 1]))
    np.testing.assert_allclose(losses, [-np.log(1e-7), -np.log(1 - 1e-7)])


def test_book_loss_classes_take_one_hot_labels_too(rng):
    p = rng.dirichlet(np.ones(4), size=6)
    y = rng.integers(0, 4, 6)
    cce = nn.CategoricalCrossEntropy()
    np.testing.assert_allclose(cce.calculate(p, np.eye(4)[y]), cce.calculate(p, y))
    a = cce.backward(p, y).copy()
    np.testing.assert_allclose(cce.backward(p, np.eye(4)[y]), a)
