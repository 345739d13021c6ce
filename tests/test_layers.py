"""Layers' analytic gradients against central differences, in float64, on every available
backend; dropout's mask."""

from __future__ import annotations

import numpy as np
import pytest
from support.gradients import assert_close, numerical_grad, to_host

import gpunn as nn


def check_layer(layer, bk, x: np.ndarray, rng):
    """d/dx of sum(layer(x) * R) for a fixed random R, and of the layer's parameters."""
    layer.move_to(bk)
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
    layer.move_to(bk)
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


def test_dropout_masks_repeat_from_the_same_generator_state(bk):
    """The same state of a layer's generator gives the same mask, on every backend (CuPy draws
    it on the device, seeded from that generator), and the next mask is another."""
    a, b = nn.Dropout(0.3), nn.Dropout(0.3)
    b.rng.bit_generator.state = a.rng.bit_generator.state
    masks = []
    for layer in (a, b):
        layer.move_to(bk)
        masks.append(to_host(layer.forward(bk.asarray(np.ones((50, 40))), training=True)))
    assert np.array_equal(masks[0], masks[1])
    again = to_host(a.forward(bk.asarray(np.ones((50, 40))), training=True))
    assert not np.array_equal(masks[0], again)


def test_dropout_keeps_each_unit_with_probability_one_minus_rate(bk):
    """Rate 0.2 drops a fifth: of 200 000 units about 160 000 are kept (5 standard deviations
    are 0.0045 of the fraction), each scaled by 1 / 0.8."""
    layer = nn.Dropout(0.2)
    layer.move_to(bk)
    out = to_host(layer.forward(bk.asarray(np.ones((400, 500))), training=True))
    kept = out != 0
    assert abs(kept.mean() - 0.8) < 0.0045
    np.testing.assert_allclose(out[kept], 1 / 0.8)
