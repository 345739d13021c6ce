"""Training behaviour: the book's run, the untrained network, determinism, the public API."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import to_host

import gpunn as nn


def spiral_model(init="nnfs", seed=0, optimizer=None, backend="numpy", dtype="float32"):
    nn.set_seed(seed)
    model = nn.Sequential([nn.Dense(2, 64, init=init), nn.ReLU(), nn.Dense(64, 3, init=init)])
    model.compile(loss=nn.SoftmaxCrossEntropy(),
                  optimizer=optimizer or nn.Adam(lr=0.05, decay=5e-7), backend=backend, dtype=dtype)
    return model


def test_untrained_spiral_network_could_be_anything():
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    model = spiral_model(init="nnfs")
    result = model.evaluate(X, y)
    assert abs(result["loss"] - math.log(3)) < 0.01
    assert abs(result["accuracy"] - 1 / 3) < 0.1


def test_the_books_run_reaches_093():
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    model = spiral_model()
    history = model.fit(X, y, epochs=10_001, batch_size=None, verbose=0)
    result = model.evaluate(X, y)
    assert result["accuracy"] >= 0.93, result
    assert len(history["loss"]) == 10_001 and history["loss"][-1] < 0.3
    assert model.optimizer.iterations == 10_001


def test_same_seed_same_numbers_bit_for_bit():
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=1)
    runs = []
    for _ in range(2):
        model = nn.Sequential([nn.Dense(2, 16, init="he", seed=3), nn.ReLU(), nn.Dropout(0.1),
                               nn.Dense(16, 3, seed=4)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend="numpy")
        history = model.fit(X, y, epochs=5, batch_size=16, seed=7, verbose=0)
        runs.append((model.get_params(), history["loss"]))
    for a, b in zip(runs[0][0], runs[1][0]):
        assert np.array_equal(a, b)
    assert runs[0][1] == runs[1][1]


def test_shuffled_minibatches_learn_vertical_data(backend):
    X, y = nn.datasets.vertical_data(samples=100, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 32, init="he"), nn.ReLU(), nn.Dense(32, 3, init="he")])
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=0.5, momentum=0.9), backend=backend)
    history = model.fit(X, y, epochs=30, batch_size=32, seed=0, verbose=0,
                        validation_data=(X[::2], y[::2]))
    assert history["accuracy"][-1] > 0.9 and history["val_accuracy"][-1] > 0.9
    assert history.epoch == list(range(1, 31))
    # 300 samples in batches of 32: 10 steps per epoch, the last one partial
    assert model.optimizer.iterations == 300


def test_predict_returns_probabilities_as_numpy(backend):
    X, y = nn.datasets.spiral_data(samples=20, classes=4, seed=0)
    model = nn.Sequential([nn.Dense(2, 8, seed=0), nn.ReLU(), nn.Dense(8, 4, seed=1)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend=backend)
    probs = model.predict(X, batch_size=7)
    assert isinstance(probs, np.ndarray) and probs.shape == (80, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    again = model.predict(X)  # a second call must not overwrite the first result
    np.testing.assert_allclose(probs, again, rtol=1e-6)
    acc = (probs.argmax(axis=1) == y).mean()
    assert model.evaluate(X, y)["accuracy"] == pytest.approx(acc)


def test_one_hot_labels_equal_indices():
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    onehot = np.eye(3)[y]
    assert model.evaluate(X, y) == model.evaluate(X, onehot)


def test_regression_with_mse_learns_sine(backend):
    X, y = nn.datasets.sine_data(samples=200)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(1, 32, init="he"), nn.ReLU(), nn.Dense(32, 32, init="he"),
                           nn.ReLU(), nn.Dense(32, 1, init="glorot"), nn.Linear()])
    model.compile(nn.MeanSquaredError(), nn.Adam(lr=0.01, decay=1e-3), backend=backend)
    first = model.evaluate(X, y)["loss"]
    model.fit(X, y, epochs=500, batch_size=None, verbose=0)
    assert model.evaluate(X, y)["loss"] < first / 20
    assert model.predict(X).shape == (200, 1)


def test_binary_cross_entropy_learns_two_spirals(backend):
    X, y = nn.datasets.spiral_data(samples=100, classes=2, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 64, init="he", weight_regularizer_l2=5e-4), nn.ReLU(),
                           nn.Dense(64, 1, init="glorot"), nn.Sigmoid()])
    model.compile(nn.BinaryCrossEntropy(), nn.Adam(lr=0.01, decay=5e-7), backend=backend)
    model.fit(X, y.reshape(-1, 1), epochs=1000, batch_size=None, verbose=0)
    assert model.evaluate(X, y)["accuracy"] > 0.85


def test_get_set_params_round_trip_and_to(backend):
    model = spiral_model(backend=backend)
    params = model.get_params()
    assert [p.shape for p in params] == [(2, 64), (1, 64), (64, 3), (1, 3)]
    new = [np.full_like(p, 0.5) for p in params]
    model.set_params(new)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_params(), new))
    # the layers' arrays are views of the one flat buffer
    assert to_host(model.params).sum() == pytest.approx(0.5 * sum(p.size for p in params))
    model.to("numpy")
    assert model.backend.name == "numpy"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_params(), new))


def test_rebinding_through_host_copies_continues_identically():
    """What to() does between backends: parameters and optimizer state go through host copies
    into new flat buffers. Training must then continue exactly as without the move."""
    X, y = nn.datasets.spiral_data(samples=30, classes=3, seed=0)
    a, b = spiral_model(seed=5, dtype="float64"), spiral_model(seed=5, dtype="float64")
    for model in (a, b):
        model.fit(X, y, epochs=3, batch_size=None, verbose=0)
    assert b.to("numpy") is b  # already there: nothing to do
    old_params = b.params
    b._bind(b.backend, b.get_params(), b._optimizer_state(host=True))
    assert b.params is not old_params and b.optimizer.iterations == 3
    for model in (a, b):
        model.fit(X, y, epochs=3, batch_size=None, verbose=0)
    for p, q in zip(a.get_params(), b.get_params()):
        assert np.array_equal(p, q)


def test_float64_and_float32_agree():
    X, y = nn.datasets.spiral_data(samples=30, classes=3, seed=0)
    runs = {}
    for dtype in ("float32", "float64"):
        model = spiral_model(dtype=dtype, optimizer=nn.SGD(lr=1.0))
        model.fit(X, y, epochs=20, batch_size=None, verbose=0)
        runs[dtype] = model.get_params()
        assert runs[dtype][0].dtype == np.dtype(dtype)
    for p32, p64 in zip(runs["float32"], runs["float64"]):
        np.testing.assert_allclose(p32, p64, rtol=1e-3, atol=1e-5)


def test_book_low_level_api_ports_line_for_line():
    """Chapter-style code: forward/backward by hand, then the optimizer's three calls."""
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    nn.set_seed(0)
    dense1 = nn.Dense(2, 64)
    activation1 = nn.ReLU()
    dense2 = nn.Dense(64, 3)
    loss_activation = nn.SoftmaxCrossEntropy()
    optimizer = nn.Adam(lr=0.05, decay=5e-7)
    for _ in range(301):
        dense1.forward(X)
        activation1.forward(dense1.output)
        dense2.forward(activation1.output)
        loss = loss_activation.forward(dense2.output, y)
        predictions = np.argmax(loss_activation.output, axis=1)
        accuracy = np.mean(predictions == y)
        loss_activation.backward(loss_activation.output, y)
        dense2.backward(loss_activation.dinputs)
        activation1.backward(dense2.dinputs)
        dense1.backward(activation1.dinputs)
        optimizer.pre_update_params()
        optimizer.update_params(dense1)
        optimizer.update_params(dense2)
        optimizer.post_update_params()
    assert loss < 0.9 and accuracy > 0.55
    # The same run through Sequential gives the same numbers (float64 both ways).
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05, decay=5e-7), dtype="float64")
    model.fit(X, y, epochs=301, batch_size=None, verbose=0)
    np.testing.assert_allclose(model.get_params()[0], dense1.weights, rtol=1e-9, atol=1e-12)


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


def test_fit_with_zero_epochs_changes_nothing():
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    before = model.get_params()
    history = model.fit(X, y, epochs=0, verbose=0)
    assert history["loss"] == [] and all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))


def test_progress_bar_and_lines(capsys):
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    model.fit(X, y, epochs=3, verbose=1)
    assert "3/3" in capsys.readouterr().err
    model.fit(X, y, epochs=2, verbose=2)
    assert "epoch 2/2 loss" in capsys.readouterr().err


def test_long_epochs_get_a_per_batch_bar(capsys):
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    model = spiral_model()
    model.fit(X, y, epochs=2, batch_size=4, verbose=1)  # 75 batches an epoch
    err = capsys.readouterr().err
    assert "150/150" in err and "batch" in err


def test_plain_python_lists_are_accepted():
    X, y = nn.datasets.vertical_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    history = model.fit(X.tolist(), y.tolist(), epochs=2, verbose=0)
    assert len(history["loss"]) == 2
    assert model.predict(X[:3].tolist()).shape == (3, 3)
    assert model.evaluate(X.tolist(), np.eye(3)[y].tolist())["accuracy"] >= 0


def test_book_loss_classes_take_one_hot_labels_too(rng):
    p = rng.dirichlet(np.ones(4), size=6)
    y = rng.integers(0, 4, 6)
    cce = nn.CategoricalCrossEntropy()
    np.testing.assert_allclose(cce.calculate(p, np.eye(4)[y]), cce.calculate(p, y))
    a = cce.backward(p, y).copy()
    np.testing.assert_allclose(cce.backward(p, np.eye(4)[y]), a)
