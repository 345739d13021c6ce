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
    # finite in float64, not in the model's float32: checked after the cast, named as the data
    "beyond float32": (lambda X, y: (np.where(np.arange(60).reshape(30, 2) == 9, 1e39, X), y, {}),
                       ValueError, r"X holds 1e\+39 at row 4, column 1, beyond the range of float32"),
    "beyond float64": (lambda X, y: (X.astype(np.longdouble) * np.longdouble("1e4000"), y, {}),
                       ValueError, r"X holds .*e\+399\d at row 1, column 0, beyond the range of"),
    "NaN label": (lambda X, y: (X, np.where(np.arange(30) == 7, np.nan, y), {}), TypeError,
                  r"integer class indices; got nan at row 7"),
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
    (lambda: nn.Dense(0, 3), ValueError, "n_inputs must be >= 1; got 0"),
    (lambda: nn.Dense(np.int64(2), 3), None, None),  # NumPy numbers are numbers
    (lambda: nn.Dropout(np.float32(0.5)), None, None),
    (lambda: nn.Sequential([nn.Dense(2, 3)]).compile(nn.SoftmaxCrossEntropy(), nn.SGD(),
                                                     backend="numpy", dtype=np.float32), None, None),
    (lambda: nn.Dropout("0.5"), TypeError, "rate must be a finite number"),
    (lambda: nn.Dense(2, 3, bias_regularizer_l1=float("inf")), ValueError, "bias_regularizer_l1 must be"),
    (lambda: nn.Dense(2, 2.5), TypeError, "n_neurons must be a whole number"),
    (lambda: nn.Dense(2, 3, init="xavier"), ValueError, "init must be one of 'he', 'glorot', 'nnfs'"),
    (lambda: nn.Dense(2, 3, weight_regularizer_l2=-1), ValueError, "weight_regularizer_l2 must be"),
    (lambda: nn.Dropout(1.0), ValueError, r"rate must be a finite number in \[0, 1\)"),
    (lambda: nn.Sequential([]), ValueError, "at least one layer"),
    (lambda: nn.Sequential([nn.Dense(2, 3), "relu"]), TypeError, r"layers\[1\] must be a gpunn layer"),
    (lambda: nn.Sequential([nn.Dense(2, 3)]).compile(nn.SoftmaxCrossEntropy(), nn.SGD(), dtype="int8"),
     ValueError, "dtype must be one of"),
    (lambda: nn.Sequential([nn.Dense(2, 3)]).compile("mse", nn.SGD()), TypeError, "loss must be"),
    (lambda: nn.Sequential([nn.Dense(2, 3)]).compile(nn.SoftmaxCrossEntropy(), "adam"), TypeError,
     "optimizer must be"),
])
def test_bad_construction(bad, error, pattern):
    if error is None:
        bad()
        return
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


def test_set_params_refuses_complex_and_non_finite_values(model):
    before = model.get_params()
    with pytest.raises(TypeError, match=r"params\[0\] .* must hold finite real numbers; got dtype complex"):
        model.set_params([p + 1j for p in before])  # not silently the real part
    with pytest.raises(ValueError, match=r"params\[2\] .* must hold finite real numbers; it holds nan"):
        model.set_params([np.full_like(p, np.nan) if i == 2 else p for i, p in enumerate(before)])
    state = model.network.state_dict(host=True)
    with pytest.raises(ValueError, match=r"params has shape \(51, 1\); the model needs shape \(51,\)"):
        model.network.load_state_dict(dict(state, params=state["params"].reshape(-1, 1)))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))


def test_one_object_in_two_places_is_refused(model):
    """One Dense twice in a model shares weights but not gradients; one optimizer, layer or loss
    in two compiled models mixes their state. Both are refused."""
    dense = nn.Dense(2, 2)
    with pytest.raises(ValueError, match=r"layers\[4\] is the same Dense\(2, 2\) object as layers\[2\]"):
        nn.Sequential([nn.Dense(2, 2), nn.ReLU(), dense, nn.ReLU(), dense])
    second = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    with pytest.raises(ValueError, match=r"optimizer \(Adam\(.*\)\) is already part of another"):
        second.compile(nn.SoftmaxCrossEntropy(), model.optimizer, backend="numpy")
    with pytest.raises(ValueError, match=r"loss \(.*\) is already part of another compiled model"):
        second.compile(model.loss, nn.SGD(), backend="numpy")
    with pytest.raises(ValueError, match=r"layers\[0\] \(Dense\(2, 8\)\) is already part of another"):
        nn.Sequential([model.layers[0], nn.ReLU(), nn.Dense(8, 3)]).compile(
            nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy")
    assert second.backend is None
    model.compile(model.loss, model.optimizer, backend="numpy")  # compiling again is fine


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
    before = model.get_params()
    # Epoch 1's own loss is finite, not epoch 2's: back to the parameters before epoch 1.
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError,
                                                  match=r"at epoch 2; .* before epoch 1"):
        model.fit(X, onehot, epochs=50, batch_size=None, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))
    assert np.isfinite(model.predict(X)).all() and model.optimizer.iterations == 0


def test_tf32_is_refused_on_numpy_and_for_float64():
    model = nn.Sequential([nn.Dense(2, 3)])
    with pytest.raises(ValueError, match="precision 'tf32' needs the cupy backend"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy", precision="tf32")
    with pytest.raises(ValueError, match="applies to float32"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), dtype="float64", precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'tf32', 'bf16'; got 'fp16'"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), precision="fp16")
    assert model.backend is None
