"""Bad input raises a ValueError or TypeError that names the problem, and leaves the model's
parameters and optimizer state exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as nn


@pytest.fixture
def model():
    nn.set_seed(0)
    m = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    return m.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend="numpy")


@pytest.fixture
def data():
    return nn.datasets.spiral_data(samples=10, classes=3, seed=0)


def with_nan(X):
    X = X.copy()
    X[4, 1] = np.nan
    return X


def with_inf(X):
    X = X.copy()
    X[2, 0] = np.inf
    return X


BAD = {
    "nan in X": (lambda X, y: (with_nan(X), y, {}), ValueError, r"X must be finite; got nan at row 4"),
    "inf in X": (lambda X, y: (with_inf(X), y, {}), ValueError, r"X must be finite; got inf at row 2"),
    "label too big": (lambda X, y: (X, np.where(np.arange(30) == 17, 5, y.astype(int)), {}), ValueError,
                      r"labels must be in \[0, 3\); got 5 at row 17"),
    "negative label": (lambda X, y: (X, np.where(np.arange(30) == 3, -1, y.astype(int)), {}), ValueError,
                       r"got -1 at row 3"),
    "fractional label": (lambda X, y: (X, y + 0.5, {}), TypeError, r"integer class indices"),
    "string labels": (lambda X, y: (X, y.astype(str), {}), TypeError, r"integer class indices"),
    "X 1-D": (lambda X, y: (X[:, 0], y, {}), ValueError, r"X must be 2-D"),
    "X wrong width": (lambda X, y: (np.hstack([X, X]), y, {}), ValueError, r"X must have 2 features"),
    "X text": (lambda X, y: (np.array([["a", "b"]] * 30), y, {}), TypeError, r"X must hold real numbers"),
    "y too short": (lambda X, y: (X, y[:-1], {}), ValueError, r"29 labels but X has 30 samples"),
    "y bad one-hot": (lambda X, y: (X, np.ones((30, 3)), {}), ValueError, r"one-hot rows"),
    "empty": (lambda X, y: (X[:0], y[:0], {}), ValueError, r"X is empty"),
}

BAD_FIT_ARGS = {
    "batch size 0": (lambda X, y: (X, y, {"batch_size": 0}), ValueError, r"batch_size must be >= 1"),
    "batch size float": (lambda X, y: (X, y, {"batch_size": 2.5}), TypeError, r"batch_size must be a whole"),
    "negative epochs": (lambda X, y: (X, y, {"epochs": -1}), ValueError, r"epochs must be >= 0"),
    "bad verbose": (lambda X, y: (X, y, {"verbose": 5}), ValueError, r"verbose must be"),
    "bad validation": (lambda X, y: (X, y, {"validation_data": (X, y[:3])}), ValueError,
                       r"validation_data y has 3 labels|3 labels"),
}


CASES = [(call, case) for call in ("fit", "train_step", "evaluate") for case in BAD]
CASES += [("fit", case) for case in BAD_FIT_ARGS]


@pytest.mark.parametrize("call, case", CASES)
def test_bad_input_raises_and_leaves_model_untouched(call, case, model, data):
    make, error, pattern = {**BAD, **BAD_FIT_ARGS}[case]
    X, y, kwargs = make(*data)
    before = model.get_params()
    state = {k: v.copy() for k, v in model.optimizer.state.items()}
    method = getattr(model, call)
    with pytest.raises(error, match=pattern):
        method(X, y, **kwargs) if call == "fit" else method(X, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))
    assert all(np.array_equal(state[k], v) for k, v in model.optimizer.state.items())
    assert model.optimizer.iterations == 0


def test_errors_are_value_or_type_errors():
    for _, error, _ in [*BAD.values(), *BAD_FIT_ARGS.values()]:
        assert issubclass(error, (ValueError, TypeError))


def test_sizes_that_do_not_chain():
    model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(32, 3)])
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\(32, 3\)\) takes 32 inputs but layer 0 "
                                         r"\(Dense\(2, 64\)\) gives 64"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD())
    assert model.backend is None


@pytest.mark.parametrize("layers, loss, pattern", [
    ([nn.Dense(2, 3), nn.Softmax()], nn.SoftmaxCrossEntropy(), "remove the final Softmax"),
    ([nn.Dense(2, 3)], nn.CategoricalCrossEntropy(), "expects the last layer to be Softmax"),
    ([nn.Dense(2, 1)], nn.BinaryCrossEntropy(), "expects the last layer to be Sigmoid"),
])
def test_loss_and_last_layer_must_match(layers, loss, pattern):
    with pytest.raises(ValueError, match=pattern):
        nn.Sequential(layers).compile(loss, nn.SGD())


@pytest.mark.parametrize("bad, error, pattern", [
    (lambda: nn.Dense(0, 3), ValueError, "n_inputs must be a whole number >= 1; got 0"),
    (lambda: nn.Dense(2, 2.5), ValueError, "n_neurons must be a whole number"),
    (lambda: nn.Dense(2, 3, init="xavier"), ValueError, "init must be one of 'he', 'glorot', 'nnfs'"),
    (lambda: nn.Dense(2, 3, weight_regularizer_l2=-1), ValueError, "weight_regularizer_l2 must be"),
    (lambda: nn.Dropout(1.0), ValueError, r"rate must be a number in \[0, 1\)"),
    (lambda: nn.Sequential([]), ValueError, "at least one layer"),
    (lambda: nn.Sequential([nn.Dense(2, 3), "relu"]), TypeError, r"layers\[1\] must be a gpunn layer"),
    (lambda: nn.Sequential([nn.Dense(2, 3)]).compile(nn.SoftmaxCrossEntropy(), nn.SGD(), dtype="int8"),
     ValueError, "dtype must be one of"),
    (lambda: nn.Sequential([nn.Dense(2, 3)]).compile("mse", nn.SGD()), TypeError, "loss must be"),
    (lambda: nn.Sequential([nn.Dense(2, 3)]).compile(nn.SoftmaxCrossEntropy(), "adam"), TypeError,
     "optimizer must be"),
])
def test_bad_construction(bad, error, pattern):
    with pytest.raises(error, match=pattern):
        bad()


def test_set_params_checks_everything_before_writing(model):
    before = model.get_params()
    bad = [p.copy() for p in before]
    bad[0] += 1
    bad[3] = np.zeros((3, 1))
    with pytest.raises(ValueError, match=r"params\[3\] \(biases of Dense layer 1, Dense\(8, 3\)\) "
                                         r"must have shape \(1, 3\); got \(3, 1\)"):
        model.set_params(bad)
    with pytest.raises(ValueError, match="must hold 4 arrays"):
        model.set_params(before[:3])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))


def test_uncompiled_model_says_compile_first(data):
    with pytest.raises(RuntimeError, match=r"compile\(loss, optimizer\) before fit"):
        nn.Sequential([nn.Dense(2, 3)]).fit(*data)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_loss_stops_fit_naming_the_epoch_and_restores(data):
    X, y = data
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 8, init="he"), nn.ReLU(), nn.Dense(8, 3, init="he")])
    model.compile(nn.MeanSquaredError(), nn.SGD(lr=1e30), backend="numpy")  # diverges at once
    onehot = np.eye(3)[y]
    model.fit(X, onehot, epochs=1, batch_size=None, verbose=0)  # epoch 1: still finite
    before = model.get_params()
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at epoch \d+"):
        model.fit(X, onehot, epochs=50, batch_size=None, verbose=0)
    after = model.get_params()
    assert all(np.isfinite(p).all() for p in after)
    assert before is not None


def test_tf32_is_refused_on_numpy_and_for_float64():
    model = nn.Sequential([nn.Dense(2, 3)])
    with pytest.raises(ValueError, match="precision 'tf32' needs the cupy backend"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy", precision="tf32")
    with pytest.raises(ValueError, match="applies to float32"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), dtype="float64", precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'tf32'; got 'bf16'"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), precision="bf16")
    assert model.backend is None
