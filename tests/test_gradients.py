"""Analytic gradients against central differences, in float64, on every available backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_host

import gpunn as nn

EPS = 1e-6


def numerical_grad(f, x: np.ndarray) -> np.ndarray:
    """Central differences of scalar f at host array x (perturbed in place, then restored)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + EPS
        up = f()
        x[i] = keep - EPS
        down = f()
        x[i] = keep
        grad[i] = (up - down) / (2 * EPS)
    return grad


def assert_close(analytic, numeric, what):
    analytic = to_host(analytic)
    scale = max(1.0, np.abs(numeric).max())
    err = np.abs(analytic - numeric).max() / scale
    assert err < 1e-6, f"{what}: max relative error {err:.2e}"


def check_layer(layer, bk, x: np.ndarray, rng):
    """d/dx of sum(layer(x) * R) for a fixed random R, and of the layer's parameters."""
    layer._set_backend(bk)
    if isinstance(layer, nn.Dense):
        layer.weights = bk.asarray(layer.weights)
        layer.biases = bk.asarray(layer.biases)
    out = layer.forward(bk.asarray(x), training=True)
    R = rng.standard_normal(out.shape)
    Rd = bk.asarray(R)

    def f():
        value = float(to_host(layer.forward(bk.asarray(x), training=True)).ravel() @ R.ravel())
        if isinstance(layer, nn.Dense):  # backward adds the L1/L2 penalty's gradient
            value += float(layer.regularization_loss())
        return value

    layer.forward(bk.asarray(x), training=True)
    dinputs = to_host(layer.backward(Rd)).copy()
    assert_close(dinputs, numerical_grad(f, x), f"{layer!r} dinputs")
    if isinstance(layer, nn.Dense):
        dweights, dbiases = to_host(layer.dweights).copy(), to_host(layer.dbiases).copy()
        for name, analytic in (("weights", dweights), ("biases", dbiases)):
            host = to_host(getattr(layer, name)).copy()

            def g(name=name, host=host):
                setattr(layer, name, bk.asarray(host))
                return f()

            assert_close(analytic, numerical_grad(g, host), f"{layer!r} d{name}")


@pytest.mark.parametrize("make", [
    lambda: nn.Dense(5, 4, init="he", seed=0),
    lambda: nn.Dense(5, 4, init="glorot", seed=0, weight_regularizer_l1=0.01,
                     weight_regularizer_l2=0.02, bias_regularizer_l1=0.03, bias_regularizer_l2=0.04),
    nn.ReLU, nn.Softmax, nn.Sigmoid, nn.Linear,
], ids=["dense", "dense-regularized", "relu", "softmax", "sigmoid", "linear"])
def test_layer_gradients(make, bk, rng):
    layer = make()
    check_layer(layer, bk, rng.standard_normal((6, 5)), rng)


def test_dropout_gradient_with_fixed_mask(bk, rng):
    layer = nn.Dropout(0.3)
    layer._set_backend(bk)
    x = rng.standard_normal((6, 5))
    out = layer.forward(bk.asarray(x), training=True)
    mask = to_host(layer.mask)
    assert np.allclose(to_host(out), x * mask)
    kept = mask != 0
    assert np.allclose(mask[kept], 1 / 0.7) and 0 < kept.mean() < 1
    R = rng.standard_normal(x.shape)
    assert np.allclose(to_host(layer.backward(bk.asarray(R))), R * mask)
    # Not training: the identity
    assert np.array_equal(to_host(layer.forward(bk.asarray(x), training=False)), x)


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
    loss._set_backend(bk)
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


@pytest.mark.parametrize("loss_name", ["softmax-cross-entropy", "categorical-cross-entropy",
                                       "binary-cross-entropy", "mean-squared-error"])
def test_model_gradients_with_regularization(loss_name, backend, rng):
    """Whole models, L1/L2 penalties included, through the flat parameter buffer."""
    make, squash, kind = LOSS_CASES[loss_name]
    reg = dict(weight_regularizer_l1=1e-3, weight_regularizer_l2=2e-3, bias_regularizer_l1=3e-3,
               bias_regularizer_l2=4e-3)
    layers = [nn.Dense(3, 6, init="he", seed=1, **reg), nn.ReLU(), nn.Dense(6, 5, init="he", seed=2),
              nn.Sigmoid(), nn.Dense(5, 4, init="glorot", seed=3, **reg)]
    layers += {"softmax": [nn.Softmax()], "sigmoid": [nn.Sigmoid()], None: []}[squash]
    model = nn.Sequential(layers)
    model.compile(make(), nn.SGD(lr=0.1), backend=backend, dtype="float64")
    n = 8
    X = rng.standard_normal((n, 3))
    y = {"labels": rng.integers(0, 4, n), "binary": rng.integers(0, 2, (n, 4)).astype(float),
         "real": rng.standard_normal((n, 4))}[kind]
    Xd, yd = model._prepare(X, y)
    params = to_host(model.params).copy()

    def f():
        model.params[...] = model.backend.asarray(params)
        out = model._forward(Xd, training=False)
        return float(to_host(model.loss.sample_losses(out, yd)).mean()) + model._regularization_loss()

    f()
    outputs = model._forward(Xd, training=True)
    model.loss.train(outputs, yd)
    model._backward(model.loss.dinputs)
    analytic = to_host(model.grads).copy()
    assert_close(analytic, numerical_grad(f, params), f"{loss_name} model gradient")
