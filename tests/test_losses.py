"""Losses: analytic gradients against central differences (float64, every backend), the fused
softmax cross-entropy against softmax then cross-entropy, clipping, one-hot labels."""

from __future__ import annotations

import numpy as np
import pytest
from support.gradients import assert_close, numerical_grad, to_host

import gpunn as nn
from gpunn.backends.base import Backend

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


def test_softmax_of_logits_far_beyond_exps_range(bk):
    """exp(1000) overflows: the row maximum must be subtracted first. Each row's answer is
    known exactly: [1, 0, 0], and 1:1:2 from logits that differ by ln 2."""
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, -1000.0 + np.log(2.0)],
                       [5000.0, 5000.0, 5000.0]])
    expect = np.array([[1.0, 0.0, 0.0], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    softmax = nn.Softmax()
    softmax.move_to(bk)
    np.testing.assert_allclose(to_host(softmax.forward(bk.asarray(logits))), expect, atol=1e-12)
    # The reference op, which the CuPy backend uses as it is and NumPy's fast path stands beside.
    out = bk.xp.empty(logits.shape)
    np.testing.assert_allclose(to_host(Backend.softmax(bk, bk.asarray(logits), out)), expect,
                               atol=1e-12)
    fused = nn.SoftmaxCrossEntropy()
    fused.move_to(bk)
    loss = fused.forward(bk.asarray(logits), bk.asarray(np.array([0, 2, 1])))
    np.testing.assert_allclose(to_host(fused.output), expect, atol=1e-12)
    clipped = -np.log(1 - 1e-7)  # p = 1 is clipped to 1 - 1e-7, as the book does
    np.testing.assert_allclose(loss, np.mean([clipped, np.log(2.0), np.log(3.0)]), rtol=1e-12)
    np.testing.assert_allclose(to_host(fused.predictions(bk.asarray(logits))), expect, atol=1e-12)


def test_cross_entropy_gradient_at_a_zero_probability_is_clipped(bk):
    """p = 0 at the true class: -1/p would be -inf; clipped to 1e-7 it is -1 / (1e-7 * n)."""
    loss = nn.CategoricalCrossEntropy()
    loss.move_to(bk)
    probs = np.array([[0.0, 1.0], [0.5, 0.5]])
    dinputs = to_host(loss.backward(bk.asarray(probs), bk.asarray(np.array([0, 1]))))
    np.testing.assert_allclose(dinputs, [[-1 / (1e-7 * 2), 0.0], [0.0, -1 / (0.5 * 2)]])
    losses = to_host(loss.forward(bk.asarray(probs), bk.asarray(np.array([0, 1]))))
    np.testing.assert_allclose(losses, [-np.log(1e-7), np.log(2.0)])


@pytest.mark.parametrize("make", [nn.SoftmaxCrossEntropy, nn.CategoricalCrossEntropy])
@pytest.mark.parametrize("labels, error, pattern", [
    ([-1, 0], ValueError, r"labels must be in \[0, 3\); got -1 at row 0"),
    ([0, 3], ValueError, r"labels must be in \[0, 3\); got 3 at row 1"),
    (["a", "b"], TypeError, "integer class indices; got dtype <U1"),
    ([np.nan, 0], TypeError, "integer class indices; got nan at row 0"),
    ([0, 1, 2], ValueError, "3 labels but X has 2 samples"),
])
def test_a_loss_called_on_its_own_checks_its_labels(make, labels, error, pattern):
    """The book's way, ``loss.forward(outputs, y)``: labels a model would refuse are refused
    here too (NumPy would read -1 as the last class)."""
    loss = make()
    with pytest.raises(error, match=pattern):
        loss.forward(np.full((2, 3), 1 / 3), np.array(labels))
    with pytest.raises(error, match=pattern):
        loss.backward(np.full((2, 3), 1 / 3), np.array(labels))
