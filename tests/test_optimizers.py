"""Each optimizer against the book's update rule written out by hand, over several steps with
decay and momentum, on the flat buffers and through the book's per-layer calls."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_host

import gpunn as nn
from gpunn.backends import get_backend
from gpunn.backends import schedule as slots

STEPS = 6


def reference(kind: str, cfg: dict, params: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    """The book's rules, one step at a time, in float64."""
    w = params.copy()
    m = np.zeros_like(w)  # momentums
    c = np.zeros_like(w)  # cache
    for t, g in enumerate(grads):
        lr = cfg["lr"] / (1 + cfg.get("decay", 0) * t)
        if kind == "sgd":
            if cfg.get("momentum"):
                m = cfg["momentum"] * m - lr * g
                w = w + m
            else:
                w = w - lr * g
        elif kind == "adagrad":
            c = c + g**2
            w = w - lr * g / (np.sqrt(c) + cfg["epsilon"])
        elif kind == "rmsprop":
            c = cfg["rho"] * c + (1 - cfg["rho"]) * g**2
            w = w - lr * g / (np.sqrt(c) + cfg["epsilon"])
        elif kind == "adam":
            b1, b2 = cfg["beta_1"], cfg["beta_2"]
            m = b1 * m + (1 - b1) * g
            c = b2 * c + (1 - b2) * g**2
            m_hat = m / (1 - b1 ** (t + 1))
            c_hat = c / (1 - b2 ** (t + 1))
            w = w - lr * m_hat / (np.sqrt(c_hat) + cfg["epsilon"])
    return w


CASES = {
    "sgd": (nn.SGD, {"lr": 0.5, "decay": 0.1}),
    "sgd-momentum": (nn.SGD, {"lr": 0.5, "decay": 0.1, "momentum": 0.9}),
    "adagrad": (nn.Adagrad, {"lr": 0.3, "decay": 0.05, "epsilon": 1e-7}),
    "rmsprop": (nn.RMSprop, {"lr": 0.02, "decay": 0.01, "epsilon": 1e-7, "rho": 0.8}),
    "adam": (nn.Adam, {"lr": 0.05, "decay": 5e-3, "epsilon": 1e-7, "beta_1": 0.8, "beta_2": 0.95}),
}


@pytest.mark.parametrize("case", CASES)
def test_flat_update_matches_hand_computed(case, bk, rng):
    cls, cfg = CASES[case]
    opt = cls(**cfg)
    w0 = rng.standard_normal(10)
    grads = [rng.standard_normal(10) for _ in range(STEPS)]
    params = bk.asarray(w0.copy())
    opt.build(bk, 10, np.float64)
    for g in grads:
        opt.step(params, bk.asarray(g))
    assert opt.iterations == STEPS
    assert float(opt.schedule[slots.ITERATIONS]) == STEPS  # the device schedule kept pace
    expect = reference(case.split("-")[0], cfg, w0, grads)
    np.testing.assert_allclose(to_host(params), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_book_calls_match_hand_computed(case, rng):
    """pre_update_params / update_params(layer) / post_update_params, as in the book."""
    cls, cfg = CASES[case]
    opt = cls(**cfg)
    layer = nn.Dense(3, 2, seed=0)
    w0, b0 = layer.weights.copy(), layer.biases.copy() + rng.standard_normal((1, 2))
    layer.biases = b0.copy()
    gw = [rng.standard_normal((3, 2)) for _ in range(STEPS)]
    gb = [rng.standard_normal((1, 2)) for _ in range(STEPS)]
    for dw, db in zip(gw, gb):
        layer.dweights, layer.dbiases = dw, db
        opt.pre_update_params()
        opt.update_params(layer)
        opt.post_update_params()
    kind = case.split("-")[0]
    np.testing.assert_allclose(layer.weights, reference(kind, cfg, w0, gw), rtol=1e-12)
    np.testing.assert_allclose(layer.biases, reference(kind, cfg, b0, gb), rtol=1e-12)


def test_train_step_is_exactly_one_sgd_step(backend, rng):
    model = nn.Sequential([nn.Dense(4, 5, seed=0), nn.ReLU(), nn.Dense(5, 3, seed=1)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=0.3), backend=backend, dtype="float64")
    X, y = rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
    before = [p.copy() for p in model.get_params()]
    net = model.network
    Xd, yd = net.prepare(X, y)
    model.loss.train(net.forward(Xd, training=True), yd)
    net.backward(model.loss.dinputs)
    grads = to_host(model.grads).copy()
    loss = model.train_step(X, y)
    flat_before = np.concatenate([p.ravel() for p in before])
    flat_after = np.concatenate([p.ravel() for p in model.get_params()])
    np.testing.assert_allclose(flat_after, flat_before - 0.3 * grads, rtol=1e-13, atol=1e-15)
    assert model.optimizer.iterations == 1
    assert loss > 0


@pytest.mark.parametrize("bad", [
    lambda: nn.SGD(lr=0), lambda: nn.SGD(lr=-1), lambda: nn.SGD(lr=float("nan")),
    lambda: nn.SGD(lr=0.1, momentum=1.0), lambda: nn.SGD(lr=0.1, decay=-1),
    lambda: nn.Adam(beta_1=1.0), lambda: nn.Adam(beta_2=-0.1), lambda: nn.Adam(epsilon=0),
    lambda: nn.RMSprop(rho=1.5), lambda: nn.Adagrad(epsilon=-1),
])
def test_invalid_hyper_parameters_are_refused(bad):
    with pytest.raises(ValueError, match=r"(lr|momentum|decay|beta_1|beta_2|epsilon|rho) must be"):
        bad()


def test_hyper_parameters_are_real_numbers_numpy_ones_too():
    with pytest.raises(TypeError, match=r"lr must be a finite number > 0.0; got '0.1'"):
        nn.SGD(lr="0.1")
    with pytest.raises(TypeError, match="momentum must be a finite number"):
        nn.SGD(momentum=True)
    opt = nn.Adam(lr=np.float32(0.01), beta_1=np.float64(0.8))
    assert type(opt.learning_rate) is float and opt.learning_rate == pytest.approx(0.01)
    assert nn.Dropout(np.float32(0.25)).rate == 0.25


def test_a_resumed_optimizer_keeps_its_own_learning_rate():
    """The state brings the step count and buffers; the learning rate is this optimizer's."""
    bk = get_backend("numpy")
    saved, resumed = nn.SGD(lr=1.0), nn.SGD(lr=1e-4, decay=0.5)
    for opt in (saved, resumed):
        opt.build(bk, 3, np.float64)
    saved.step(np.zeros(3), np.ones(3))
    resumed.load_state_dict(saved.state_dict())
    assert resumed.iterations == 1 and resumed.current_learning_rate == 1e-4
    params = np.zeros(3)
    resumed.step(params, np.ones(3))
    np.testing.assert_allclose(params, -1e-4 / (1 + 0.5 * 1))


def test_lr_property_and_decay_sequence():
    opt = nn.SGD(lr=1.0, decay=0.5)
    seen = []
    for _ in range(3):
        opt.pre_update_params()
        seen.append(opt.current_learning_rate)
        opt.post_update_params()
    assert opt.lr == 1.0 and seen == [1.0, 1 / 1.5, 1 / 2.0]
    assert get_backend("numpy").name == "numpy"


@pytest.mark.parametrize("case", CASES)
def test_update_then_count_step_is_one_step(case, rng):
    """update() is the device work (a graph records it), count_step() the host bookkeeping."""
    cls, cfg = CASES[case]
    bk = get_backend("numpy")
    w0, g = rng.standard_normal(7), rng.standard_normal(7)
    a, b = cls(**cfg), cls(**cfg)
    pa, pb = w0.copy(), w0.copy()
    for opt in (a, b):
        opt.build(bk, 7, np.float64)
    for _ in range(3):
        a.step(pa, g)
        b.update(pb, g)
        b.count_step()
    assert np.array_equal(pa, pb)
    assert (a.iterations, a.current_learning_rate) == (b.iterations, b.current_learning_rate)
    assert np.array_equal(a.schedule, b.schedule)


def test_the_schedule_advances_as_the_books_calls_do():
    opt = nn.Adam(lr=0.05, decay=0.5, beta_1=0.8, beta_2=0.9)
    opt.build(get_backend("numpy"), 3, np.float64)
    for t in range(3):
        opt.update(np.zeros(3), np.ones(3))
        opt.pre_update_params()
        s = opt.schedule
        assert s[slots.LR_T] == opt.current_learning_rate == 0.05 / (1 + 0.5 * t)
        assert s[slots.CORRECTION_1] == 1 / (1 - 0.8 ** (t + 1))
        assert s[slots.CORRECTION_2] == 1 / (1 - 0.9 ** (t + 1))
        opt.post_update_params()
        assert s[slots.ITERATIONS] == opt.iterations == t + 1


def test_state_dict_round_trip_and_refusal(rng):
    bk = get_backend("numpy")
    a, b = nn.Adam(lr=0.1), nn.Adam(lr=0.1)
    for opt in (a, b):
        opt.build(bk, 5, np.float64)
    params = rng.standard_normal(5)
    for _ in range(4):
        a.step(params, rng.standard_normal(5))
    b.load_state_dict(a.state_dict())
    # the schedule's inputs follow (the derived slots are remade by the next step's advance)
    assert b.iterations == 4 and np.array_equal(b.schedule[:slots.LR_T], a.schedule[:slots.LR_T])
    for name in a.state:
        assert np.array_equal(a.state[name], b.state[name])
    with pytest.raises(ValueError, match=r"lacks the optimizer state \['cache'\]"):
        b.load_state_dict({"state": {"momentums": np.zeros(5)}, "iterations": 9,
                           "current_learning_rate": 0.1})
    assert b.iterations == 4
