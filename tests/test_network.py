"""network.py: whole-network gradients through the flat buffer (central differences, float64,
every backend), the ReLU folding and Dense -> ReLU -> Dense links, the masked path, state dicts."""

from __future__ import annotations

import numpy as np
import pytest
from support.backends import MaskingNumpy
from support.gradients import assert_close, numerical_grad, to_host
from test_losses import LOSS_CASES

import gpunn as nn


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
    net = model.network
    Xd, yd = net.prepare(X, y)
    params = to_host(model.params).copy()

    def f():
        model.params[...] = model.backend.asarray(params)
        out = net.forward(Xd, training=False)
        return float(to_host(model.loss.sample_losses(out, yd)).mean()) + net.regularization_loss()

    f()
    outputs = net.forward(Xd, training=True)
    model.loss.train(outputs, yd)
    net.backward(model.loss.dinputs)
    analytic = to_host(model.grads).copy()
    assert_close(analytic, numerical_grad(f, params), f"{loss_name} model gradient")


def spiral_model(backend, dropout=False, regularized=False):
    reg = dict(weight_regularizer_l2=1e-3, bias_regularizer_l1=1e-4) if regularized else {}
    layers = [nn.Dense(2, 24, init="he", seed=1, **reg), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.1))
    layers += [nn.Dense(24, 19, init="he", seed=2, **reg), nn.ReLU(), nn.Dense(19, 3, seed=3)]
    model = nn.Sequential(layers)
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend=backend)
    return model


@pytest.mark.parametrize("dropout, regularized", [(False, False), (False, True), (True, False)])
def test_masked_path_trains_exactly_as_the_plain_one(dropout, regularized):
    """The fused Dense path (cuBLASLt epilogues on a GPU) as the layers use it: a backend that
    keeps ReLU masks as packed bits and reads them back must train exactly as plain NumPy."""
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)  # 150 rows: 64, 64, 22
    nn.set_seed(5)
    plain = spiral_model("numpy", dropout, regularized)
    masking = MaskingNumpy()
    nn.set_seed(5)
    fused = spiral_model(masking, dropout, regularized)
    for model in (plain, fused):
        model.fit(X, y, epochs=3, batch_size=64, seed=2, verbose=0)
    for a, b in zip(plain.get_params(), fused.get_params()):
        assert np.array_equal(a, b)
    assert plain.evaluate(X, y) == fused.evaluate(X, y)
    # Dense(2, 24) -> ReLU -> [Dropout] -> Dense(24, 19) -> ReLU -> Dense(19, 3): the second
    # pair is fused always, the first only without the Dropout between.
    pairs = 1 if dropout else 2
    steps = 3 * 3
    assert masking.counts["read"] == pairs * steps
    assert masking.counts["written"] == pairs * steps  # evaluate's forward passes keep no mask


def test_compile_links_each_dense_relu_dense_pair():
    model = spiral_model("numpy", dropout=True)
    d1, d2, d3 = model.dense_layers
    assert (d1.grads_from_above, d2.relu_below) == (False, None)  # a Dropout sits between
    assert d3.relu_below is d2 and d2.grads_from_above and not d3.grads_from_above
    assert [d.activation for d in (d1, d2, d3)] == ["relu", "relu", None]
    assert model.network.first_trainable == 0 and not d1.need_dinputs and d2.need_dinputs
    plain = nn.Sequential([nn.Dense(2, 4), nn.Dense(4, 3)])
    plain.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy")
    assert all(d.relu_below is None and not d.grads_from_above for d in plain.dense_layers)


def test_parameters_are_views_of_one_flat_buffer():
    model = spiral_model("numpy")
    net = model.network
    sizes = [p.size for p in model.get_params()]
    assert net.params.size == sum(sizes) == net.grads.size
    net.params[...] = np.arange(net.params.size)
    assert model.dense_layers[0].weights[0, 1] == 1 and model.dense_layers[0].biases[0, 0] == 48
    assert all(buf.shape == net.params.shape for buf in model.optimizer.state.values())


def test_state_dict_through_host_copies_continues_identically():
    """What to() and checkpoints do: parameters and optimizer state go through host copies
    into other flat buffers. Training must then continue exactly as without the move."""
    X, y = nn.datasets.spiral_data(samples=30, classes=3, seed=0)
    nn.set_seed(5)
    a = spiral_model("numpy")
    b = spiral_model("numpy")  # other initial weights: all must come from the state dict
    a.fit(X, y, epochs=3, batch_size=None, verbose=0)
    state = a.network.state_dict(host=True)
    assert state["optimizer"]["iterations"] == 3
    assert set(state["optimizer"]["state"]) == {"momentums", "cache"}
    b.network.load_state_dict(state)
    assert b.params is not a.params and b.optimizer.iterations == 3
    for model in (a, b):
        model.fit(X, y, epochs=3, batch_size=None, verbose=0)
    for p, q in zip(a.get_params(), b.get_params()):
        assert np.array_equal(p, q)


def test_a_state_dict_that_does_not_fit_is_refused_before_anything_is_written():
    model = spiral_model("numpy")
    before = model.get_params()
    state = model.network.state_dict(host=True)
    short = dict(state, params=state["params"][:-1])
    with pytest.raises(ValueError, match=r"params has shape \(\d+,\); the model needs shape"):
        model.network.load_state_dict(short)
    no_cache = dict(state, optimizer=dict(state["optimizer"], state={"momentums": state["params"]}))
    with pytest.raises(ValueError, match=r"lacks the optimizer state \['cache'\]"):
        model.network.load_state_dict(dict(no_cache, params=state["params"] + 1))
    assert all(np.array_equal(p, q) for p, q in zip(before, model.get_params()))
