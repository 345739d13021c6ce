"""The adversarial suite: hypothesis generates bad arrays, labels, hyper-parameters and crafted
model files. Each must get a ValueError or TypeError whose message names what is wrong, and leave
the model exactly as it was; a crafted file either loads as a working model or is refused, never
anything else (no other exception, no half-restored model)."""

from __future__ import annotations

import json
import math
import os
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.files import read_model_file

import gpunn as nn

#: Examples per test: 60 in CI; GPUNN_FUZZ_EXAMPLES=5000 for a long hunt.
SETTINGS = settings(max_examples=int(os.environ.get("GPUNN_FUZZ_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

N, FEATURES, CLASSES = 12, 2, 3


def fresh_model(seed: int = 0, dropout: bool = False) -> nn.Sequential:
    nn.set_seed(seed)
    layers = [nn.Dense(FEATURES, 8), nn.ReLU()] + ([nn.Dropout(0.1)] if dropout else [])
    model = nn.Sequential(layers + [nn.Dense(8, CLASSES)])
    return model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend="numpy")


def good_data() -> tuple[np.ndarray, np.ndarray]:
    X, y = nn.datasets.spiral_data(samples=N // CLASSES, classes=CLASSES, seed=0)
    return X, y.astype(np.int64)


class Unchanged:
    """The model's parameters, optimizer state and step count, to compare after a refusal."""

    def __init__(self, model: nn.Sequential) -> None:
        self.model = model
        self.params = model.get_params()
        self.state = {k: np.array(v) for k, v in model.optimizer.state.items()}
        self.iterations = model.optimizer.iterations

    def check(self) -> None:
        assert all(np.array_equal(a, b) for a, b in zip(self.params, self.model.get_params()))
        assert all(np.array_equal(self.state[k], v) for k, v in self.model.optimizer.state.items())
        assert self.model.optimizer.iterations == self.iterations


def refused(call, names: tuple[str, ...]) -> Exception:
    """``call()`` raises a ValueError or TypeError whose message names one of ``names``."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert any(name in message for name in names), message
    return info.value


# ---- bad arrays ------------------------------------------------------------------------------

@st.composite
def bad_features(draw) -> np.ndarray:
    """X that no float32 model of 2 features can take, each for one reason."""
    X, _ = good_data()
    row, col = draw(st.integers(0, N - 1)), draw(st.integers(0, FEATURES - 1))
    kind = draw(st.sampled_from(["non-finite", "beyond float32", "ndim", "width", "dtype", "empty"]))
    if kind == "non-finite":
        X = X.copy()
        X[row, col] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif kind == "beyond float32":
        X = X.copy()
        X[row, col] = draw(st.floats(3.5e38, 1e308)) * draw(st.sampled_from([1, -1]))
    elif kind == "ndim":
        X = draw(st.sampled_from([X[:, 0], X[None], np.float64(1.0)]))
    elif kind == "width":
        width = draw(st.sampled_from([1, 3, 7]))
        X = np.resize(X, (N, width))
    elif kind == "dtype":
        X = draw(st.sampled_from([X.astype(np.complex128), X.astype(str), X.astype(object)]))
    else:
        X = X[:0]
    return X


@st.composite
def bad_labels(draw) -> np.ndarray:
    """Class labels for 3 classes and 12 samples, wrong for one reason."""
    _, y = good_data()
    y = y.copy()
    row = draw(st.integers(0, N - 1))
    kind = draw(st.sampled_from(["range", "fraction", "nan", "text", "length", "one-hot", "ndim"]))
    if kind == "range":
        y[row] = draw(st.one_of(st.integers(-(2**62), -1), st.integers(CLASSES, 2**62)))
        return y
    if kind == "fraction":
        return np.where(np.arange(N) == row, draw(st.floats(0.01, 0.99)) + 1, y)
    if kind == "nan":
        return np.where(np.arange(N) == row, np.nan, y)
    if kind == "text":
        return y.astype(str)
    if kind == "length":
        return y[:draw(st.sampled_from([0, N - 1]))] if draw(st.booleans()) else np.resize(y, N + 1)
    if kind == "one-hot":
        onehot = np.eye(CLASSES)[y]
        onehot[row] = draw(st.sampled_from([[1, 1, 0], [0, 0, 0], [0.5, 0.5, 0], [2, 0, 0]]))
        return onehot
    return y.reshape(N, 1, 1)


@SETTINGS
@given(X=bad_features(), call=st.sampled_from(["fit", "train_step", "evaluate", "predict"]))
def test_bad_features_are_refused_and_change_nothing(X, call):
    model = fresh_model()
    before = Unchanged(model)
    _, y = good_data()
    if call == "predict":
        refused(lambda: model.predict(X), ("X",))
    elif call == "fit":
        refused(lambda: model.fit(X, y, epochs=2, verbose=0), ("X",))
    else:
        refused(lambda: getattr(model, call)(X, y), ("X",))
    before.check()


@SETTINGS
@given(y=bad_labels(), call=st.sampled_from(["fit", "train_step", "evaluate"]))
def test_bad_labels_are_refused_and_change_nothing(y, call):
    model = fresh_model()
    before = Unchanged(model)
    X, _ = good_data()
    if call == "fit":
        refused(lambda: model.fit(X, y, epochs=2, verbose=0), ("y",))
    else:
        refused(lambda: getattr(model, call)(X, y), ("y",))
    before.check()


@SETTINGS
@given(y=bad_labels(), make=st.sampled_from([nn.SoftmaxCrossEntropy, nn.CategoricalCrossEntropy]))
def test_a_loss_on_its_own_refuses_the_labels_a_model_refuses(y, make):
    refused(lambda: make().forward(np.full((N, CLASSES), 1 / CLASSES), y), ("y",))


# ---- bad hyper-parameters ----------------------------------------------------------------------

NOT_NUMBERS = st.sampled_from([None, "0.1", [0.1], {}, True, np.bool_(False), 1j, b"1", object()])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf, np.float32("nan")])
#: (what takes it, its name, numbers out of its range)
HYPER = [
    (lambda v: nn.SGD(lr=v), "lr", st.floats(max_value=0.0)),
    (lambda v: nn.Adam(decay=v), "decay", st.floats(max_value=-1e-300)),
    (lambda v: nn.SGD(momentum=v), "momentum", st.floats(min_value=1.0) | st.floats(max_value=-1e-300)),
    (lambda v: nn.RMSprop(rho=v), "rho", st.floats(min_value=1.0) | st.floats(max_value=-1e-300)),
    (lambda v: nn.Adam(beta_1=v), "beta_1", st.floats(min_value=1.0)),
    (lambda v: nn.Adam(beta_2=v), "beta_2", st.floats(max_value=-1e-300)),
    (lambda v: nn.Adagrad(epsilon=v), "epsilon", st.floats(max_value=0.0)),
    (lambda v: nn.Dropout(v), "rate", st.floats(min_value=1.0) | st.floats(max_value=-1e-300)),
    (lambda v: nn.Dense(2, 3, weight_regularizer_l2=v), "weight_regularizer_l2",
     st.floats(max_value=-1e-300)),
    (lambda v: nn.Dense(v, 3), "n_inputs", st.integers(max_value=0) | st.floats(0.5, 3.5)),
    (lambda v: nn.Dense(2, v), "n_neurons", st.integers(max_value=0)),
]


@SETTINGS
@given(case=st.sampled_from(HYPER), data=st.data())
def test_bad_hyper_parameters_are_refused_naming_them(case, data):
    make, name, out_of_range = case
    value = data.draw(st.one_of(NOT_NUMBERS, NON_FINITE, out_of_range.filter(math.isfinite)))
    assume(not (name == "lr" and value is None))  # lr=None: the optimizer's default
    refused(lambda: make(value), (name,))


@SETTINGS
@given(case=st.sampled_from(HYPER[:9]), value=st.floats(1e-30, 0.999))
def test_numpy_numbers_in_range_are_numbers(case, value):
    make, name, _ = case
    for number in (np.float32(value), np.float64(value)):
        make(number)


# ---- crafted model files -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained model and a checkpoint of it (with dropout, so generator states too)."""
    folder = tmp_path_factory.mktemp("crafted")
    X, y = good_data()
    model = fresh_model(dropout=True)
    model.fit(X, y, epochs=3, batch_size=4, verbose=0, checkpoint=folder / "ck.safetensors")
    model.save(folder / "model.safetensors")
    return folder


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                 st.text(st.characters(codec="ascii"), max_size=5), st.just([]), st.just({}),
                 st.just([1, "a"]), st.just({"type": "Dense"}))


def paths_in(value, prefix=()) -> list[tuple]:
    """Every key path into nested JSON dicts and lists."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths_in(inner, (*prefix, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += paths_in(inner, (*prefix, i))
    return found


def mutate_meta(meta: dict, path: tuple, action: str, junk) -> None:
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = junk


@st.composite
def crafted_tensors(draw, tensors: dict) -> dict:
    tensors = dict(tensors)
    name = draw(st.sampled_from(sorted(tensors)))
    values = tensors[name]
    action = draw(st.sampled_from(["drop", "dtype", "shorter", "longer", "2-D", "extra", "value"]))
    if action == "drop":
        del tensors[name]
    elif action == "dtype":
        tensors[name] = values.astype(draw(st.sampled_from([np.float16, np.float64, np.int32,
                                                            np.int64, np.uint8, np.float32])))
    elif action == "shorter":
        tensors[name] = values.ravel()[:draw(st.integers(0, max(0, values.size - 1)))].copy()
    elif action == "longer":
        tensors[name] = np.concatenate([values.ravel(), values.ravel()[:1]])
    elif action == "2-D" and values.size:
        tensors[name] = values.reshape(1, -1).copy()
    elif action == "extra":
        tensors[draw(st.sampled_from(["optimizer.extra", "history.x", "params2"]))] = values
    elif values.size:
        changed = values.copy()
        index = draw(st.integers(0, changed.size - 1))
        floating = np.issubdtype(changed.dtype, np.floating)
        changed.reshape(-1)[index] = draw(st.sampled_from([np.nan, np.inf, 1e30, -0.0, 7]
                                                          if floating else [-1, 0, 2**40]))
        tensors[name] = changed
    return tensors


def write(folder, name: str, tensors: dict, meta: dict) -> object:
    from safetensors.numpy import save_file

    path = folder / name
    save_file(tensors, str(path), metadata={"gpunn": json.dumps(meta)})
    return path


def loads_or_is_refused(path) -> None:
    """A crafted file gives a working model or a ValueError naming the file; nothing else."""
    try:
        model = nn.load(path, backend="numpy")
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    X, _ = good_data()
    assert np.isfinite(model.predict(X)).all()


def resumes_or_is_refused(path) -> None:
    """A crafted checkpoint resumes, or is refused with the model exactly as it was."""
    X, y = good_data()
    model = fresh_model(seed=5, dropout=True)
    before = Unchanged(model)
    try:
        # A valid file may hold values that overflow in training, or record another run than
        # this fit (fit then says so, in a UserWarning, and goes on).
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.fit(X, y, epochs=5, batch_size=4, verbose=0, resume_from=path)
    except ValueError as exc:
        assert str(path) in str(exc)
        before.check()
        return
    except FloatingPointError:  # it resumed, then diverged: the model holds finite parameters
        pass
    assert model.optimizer.iterations >= before.iterations and np.isfinite(model.params).all()


@SETTINGS
@given(data=st.data(), which=st.sampled_from(["model", "ck"]))
def test_crafted_metadata_loads_as_a_working_model_or_is_refused(saved, data, which):
    tensors, meta = read_model_file(saved / f"{which}.safetensors")
    action = data.draw(st.sampled_from(["delete", "replace"]))
    path = data.draw(st.sampled_from(paths_in(meta)))
    mutate_meta(meta, path, action, data.draw(JUNK))
    crafted = write(saved, f"meta-{which}.safetensors", tensors, meta)
    loads_or_is_refused(crafted)
    if which == "ck":
        resumes_or_is_refused(crafted)


@SETTINGS
@given(data=st.data(), which=st.sampled_from(["model", "ck"]))
def test_crafted_tensors_load_as_a_working_model_or_are_refused(saved, data, which):
    tensors, meta = read_model_file(saved / f"{which}.safetensors")
    crafted = write(saved, f"tensors-{which}.safetensors", data.draw(crafted_tensors(tensors)), meta)
    loads_or_is_refused(crafted)
    if which == "ck":
        resumes_or_is_refused(crafted)


@SETTINGS
@given(data=st.data())
def test_raw_bytes_that_lie_are_refused(saved, data):
    """Size lies in the safetensors header (its length, a tensor's shape or offsets), a cut-short
    file, flipped bytes: refused as not a valid model file, or loaded whole."""
    raw = (saved / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8:8 + length])
    kind = data.draw(st.sampled_from(["length", "shape", "offsets", "dtype", "cut", "flip"]))
    name = data.draw(st.sampled_from(sorted(k for k in head if k != "__metadata__")))
    if kind == "length":
        body = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1))) + raw[8:]
    elif kind in ("shape", "offsets", "dtype"):
        if kind == "shape":
            head[name]["shape"] = data.draw(st.lists(st.integers(0, 2**40), min_size=0, max_size=3))
        elif kind == "offsets":
            head[name]["data_offsets"] = data.draw(st.lists(st.integers(0, 2**40), min_size=2,
                                                            max_size=2))
        else:
            head[name]["dtype"] = data.draw(st.sampled_from(["F16", "F64", "I64", "U8", "BOOL", "X"]))
        text = json.dumps(head).encode()
        text += b" " * (-len(text) % 8)
        body = struct.pack("<Q", len(text)) + text + raw[8 + length:]
    elif kind == "cut":
        body = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        at = data.draw(st.integers(0, len(raw) - 1))
        body = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:]
    crafted = saved / "raw.safetensors"
    crafted.write_bytes(body)
    loads_or_is_refused(crafted)
