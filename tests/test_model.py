"""Sequential, the face: the book's run, the untrained network, determinism, the public API."""

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
    # The same run through Sequential gives the same numbers (float64 both ways) with the NumPy
    # steps, and the same to rounding with the compiled trainer, the default where numba is
    # installed (its sums run in another order; 301 epochs of Adam grow that to about 1e-7).
    for compiled in (False, True):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05, decay=5e-7), dtype="float64")
        model.backend.one_kernel_trainer = compiled
        model.fit(X, y, epochs=301, batch_size=None, verbose=0)
        tolerance = {"rtol": 1e-5, "atol": 1e-6} if compiled else {"rtol": 1e-9, "atol": 1e-12}
        np.testing.assert_allclose(model.get_params()[0], dense1.weights, **tolerance)


def test_fit_with_zero_epochs_changes_nothing():
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    before = model.get_params()
    history = model.fit(X, y, epochs=0, verbose=0)
    assert history["loss"] == [] and all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))


def test_plain_python_lists_are_accepted():
    X, y = nn.datasets.vertical_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    history = model.fit(X.tolist(), y.tolist(), epochs=2, verbose=0)
    assert len(history["loss"]) == 2
    assert model.predict(X[:3].tolist()).shape == (3, 3)
    assert model.evaluate(X.tolist(), np.eye(3)[y].tolist())["accuracy"] >= 0


def test_backend_options_belong_to_each_model():
    a, b = spiral_model(), spiral_model()
    assert a.backend is not b.backend and a.backend.name == b.backend.name == "numpy"
    a.backend.one_kernel_trainer = False
    assert b.backend.one_kernel_trainer and a.precision == b.precision == "fp32"
    with pytest.raises(TypeError, match="one_kernel_trainer must be True or False; got 'yes'"):
        a.backend.one_kernel_trainer = "yes"
    assert not a.backend.one_kernel_trainer  # the refused value changed nothing
    b.backend.upload_thread = True
    assert b.backend.upload_thread and not a.backend.upload_thread
    assert b.backend.options_set() == {"upload_thread": True}
    with pytest.raises(TypeError, match="upload_thread must be True or False; got 1"):
        b.backend.upload_thread = 1
    assert b.backend.upload_thread
    a.backend.tune_gemms = True
    assert a.backend.tune_gemms and not b.backend.tune_gemms
    assert a.backend.options_set() == {"one_kernel_trainer": False, "tune_gemms": True}
    with pytest.raises(TypeError, match="tune_gemms must be True or False; got 'on'"):
        a.backend.tune_gemms = "on"
    assert a.backend.tune_gemms
    b.backend.narrow_kernels = True
    assert b.backend.narrow_kernels and not a.backend.narrow_kernels
    assert b.backend.options_set() == {"upload_thread": True, "narrow_kernels": True}
    with pytest.raises(TypeError, match="narrow_kernels must be True or False; got None"):
        b.backend.narrow_kernels = None
    assert b.backend.narrow_kernels


def test_to_keeps_the_models_options():
    model = spiral_model()
    model.backend.epilogue_policy = "never"
    assert model.to("numpy") is model and model.backend.epilogue_policy == "never"


def test_validation_split_holds_out_the_last_rows():
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    order = np.random.default_rng(0).permutation(60)
    X, y = X[order], y[order]
    def spiral():
        return nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])

    nn.set_seed(0)
    split = spiral().compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy")
    nn.set_seed(0)
    given = spiral().compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy")
    a = split.fit(X, y, epochs=3, batch_size=16, seed=1, verbose=0, validation_split=0.25)
    b = given.fit(X[:45], y[:45], epochs=3, batch_size=16, seed=1, verbose=0,
                  validation_data=(X[45:], y[45:]))
    assert a.history == b.history and "val_loss" in a and a.keys() == b.keys()
    with pytest.raises(ValueError, match="give validation_data or validation_split, not both"):
        split.fit(X, y, verbose=0, validation_split=0.2, validation_data=(X, y))
    with pytest.raises(ValueError, match=r"validation_split=0.01 of 60 samples leaves no validation"):
        split.fit(X, y, verbose=0, validation_split=0.01)
    with pytest.raises(ValueError, match=r"validation_split must be a finite number in \[0, 1\)"):
        split.fit(X, y, verbose=0, validation_split=1.0)


def test_regression_reports_accuracy_only_when_asked():
    X, y = nn.datasets.sine_data(samples=40)
    plain = nn.Sequential([nn.Dense(1, 8), nn.ReLU(), nn.Dense(8, 1)])
    plain.compile(nn.MeanSquaredError(), nn.Adam(), backend="numpy")
    assert plain.fit(X, y, epochs=2, verbose=0).keys() == ["loss"]
    assert list(plain.evaluate(X, y)) == ["loss"]
    asked = nn.Sequential([nn.Dense(1, 8), nn.ReLU(), nn.Dense(8, 1)])
    asked.compile(nn.MeanSquaredError(), nn.Adam(), backend="numpy", metrics=["accuracy"])
    assert asked.fit(X, y, epochs=2, verbose=0).keys() == ["loss", "accuracy"]
    assert list(asked.evaluate(X, y)) == ["loss", "accuracy"]
    classifier = nn.Sequential([nn.Dense(2, 3)]).compile(nn.SoftmaxCrossEntropy(), nn.SGD(),
                                                          backend="numpy", metrics=[])
    assert list(classifier.evaluate(*nn.datasets.spiral_data(5, 3))) == ["loss"]
    with pytest.raises(ValueError, match=r"metrics must be a list of 'accuracy' \(or empty\)"):
        nn.Sequential([nn.Dense(2, 3)]).compile(nn.SoftmaxCrossEntropy(), nn.SGD(), metrics="mae")


def test_metrics_survive_save_load_pickle_and_to(tmp_path):
    import pickle

    X, y = nn.datasets.sine_data(samples=20)
    model = nn.Sequential([nn.Dense(1, 4), nn.ReLU(), nn.Dense(4, 1)])
    model.compile(nn.MeanSquaredError(), nn.Adam(), backend="numpy", metrics=["accuracy"])
    model.save(tmp_path / "m.safetensors")
    for again in (nn.load(tmp_path / "m.safetensors"), pickle.loads(pickle.dumps(model)),
                  model.to("numpy")):
        assert list(again.evaluate(X, y)) == ["loss", "accuracy"]


def test_labels_as_a_column_are_labels():
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    nn.set_seed(0)
    a = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    a.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy")
    nn.set_seed(0)
    b = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    b.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy")
    assert a.fit(X, y, epochs=2, verbose=0).history == b.fit(X, y[:, None], epochs=2, verbose=0).history


def test_summary_lists_layers_shapes_and_counts(capsys):
    model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dropout(0.1), nn.Dense(64, 3)])
    model.summary()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "layer", "output", "shape", "parameters"]
    assert lines[2].split() == ["0", "Dense(2,", "64)", "(None,", "64)", "192"]
    assert lines[5].split() == ["3", "Dense(64,", "3)", "(None,", "3)", "195"]
    assert lines[6] == "parameters: 387, all trainable" and lines[7] == "not compiled"
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=0.5), backend="numpy", dtype="float64")
    seen = []
    model.summary(print_fn=seen.append)
    assert seen[0].splitlines()[-1] == ("backend numpy, float64, GEMMs in fp32; loss "
                                        "SoftmaxCrossEntropy; optimizer SGD(lr=0.5, decay=0.0, "
                                        "momentum=0.0); metrics accuracy")
