"""training/steps.py: the planned step (what the CuPy backend captures as a CUDA graph), checked
through NumPy. It must give the same numbers as the eager step, bit for bit; each network must take
the path it can, and say why not the faster ones."""

from __future__ import annotations

import numpy as np
import pytest
from support.backends import PlanningNumpy, RecordingNumpy
from support.training import OPTIMIZERS, made_steps

import gpunn as nn
from gpunn.training import steps


def build(make_opt, planned: bool, hidden=16, dtype="float32"):
    model = nn.Sequential([nn.Dense(2, hidden, init="he", seed=1), nn.ReLU(),
                           nn.Dense(hidden, hidden, init="he", seed=2), nn.ReLU(),
                           nn.Dense(hidden, 3, seed=3)])
    model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend=PlanningNumpy() if planned else "numpy",
                  dtype=dtype)
    return model


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
@pytest.mark.parametrize("batch_size", [None, 64])
def test_planned_training_equals_the_eager_step_bit_for_bit(make_opt, batch_size):
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)  # 150 rows: 64, 64, 22
    runs = []
    for planned in (False, True):
        model = build(make_opt, planned)
        history = model.fit(X, y, epochs=150 if batch_size is None else 4, batch_size=batch_size,
                            seed=3, verbose=0)
        runs.append((model, history))
    (plain, h_plain), (fast, h_fast) = runs
    for a, b in zip(plain.get_params(), fast.get_params()):
        assert np.array_equal(a, b)
    assert h_plain.history == h_fast.history
    assert plain.optimizer.iterations == fast.optimizer.iterations
    assert plain.optimizer.current_learning_rate == fast.optimizer.current_learning_rate
    # Full batch: launches of 64, 64 and 22 epochs; mini-batches: one step per batch.
    expect = {(150, 64), (150, 22)} if batch_size is None else {(64, 1), (22, 1)}
    assert made_steps(fast) == {key: "planned" for key in expect}
    assert set(made_steps(plain).values()) == {"eager"}


def test_planned_train_step_equals_eager():
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    plain, fast = build(OPTIMIZERS[3], False), build(OPTIMIZERS[3], True)
    for _ in range(3):
        assert plain.train_step(X, y) == fast.train_step(X, y)
    for a, b in zip(plain.get_params(), fast.get_params()):
        assert np.array_equal(a, b)


def test_train_step_returns_the_mean_loss_before_the_step():
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = build(OPTIMIZERS[0], False, dtype="float64")
    before = model.evaluate(X, y)["loss"]
    assert model.train_step(X, y) == pytest.approx(before, rel=1e-12)
    assert model.evaluate(X, y)["loss"] != before


@pytest.mark.parametrize("planned", [False, True])
def test_prepare_step_takes_one_step_per_call(planned):
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model, reference = build(OPTIMIZERS[3], planned), build(OPTIMIZERS[3], False)
    step = model.prepare_step(X, y)
    for _ in range(4):
        step()
        reference.train_step(X, y)
    assert model.optimizer.iterations == 4
    for a, b in zip(reference.get_params(), model.get_params()):
        assert np.array_equal(a, b)


def test_what_is_not_planned_says_why():
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    cases = [
        (nn.Sequential([nn.Dense(2, 4), nn.Dropout(0.1), nn.Dense(4, 3)]), nn.SoftmaxCrossEntropy(),
         "Dropout"),
        (nn.Sequential([nn.Dense(2, 3), nn.Softmax()]), nn.CategoricalCrossEntropy(),
         "CategoricalCrossEntropy is not planned"),
        (nn.Sequential([nn.Dense(2, 3, weight_regularizer_l2=1e-3)]), nn.SoftmaxCrossEntropy(),
         "penalties"),
    ]
    for model, loss, reason in cases:
        model.compile(loss, nn.SGD(), backend=PlanningNumpy())
        assert reason in steps.why_not(model.network, "planned")
        assert steps.why_not(model.network, "eager") is None
        model.fit(X, y, epochs=2, verbose=0)  # trains the eager way
        assert set(made_steps(model).values()) == {"eager"}


def test_the_numpy_backend_says_why_it_does_not_plan():
    model = build(OPTIMIZERS[0], planned=False)
    assert steps.why_not(model.network, "planned") == model.backend.why_not("planned_steps")
    assert "numpy backend takes each step as it comes" in steps.why_not(model.network, "planned")
    assert steps.choose(model.network, 300) == "eager"
    with pytest.raises(ValueError, match="path must be one of 'eager', 'planned', 'one-kernel'"):
        steps.why_not(model.network, "graph")


def test_out_of_memory_while_planning_names_batch_size_and_bytes(monkeypatch):
    model = build(OPTIMIZERS[0], True, hidden=4096)
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    real_empty = model.backend.empty

    def empty(shape, dtype):
        if shape[0] == 300:
            raise MemoryError("out of memory allocating 4915200 bytes")
        return real_empty(shape, dtype)

    monkeypatch.setattr(model.backend, "empty", empty)
    need = steps.plan_bytes(model.network, 300) / 2**20
    with pytest.raises(MemoryError, match=rf"batch_size=300: the plan needs about {need:.1f} MiB"):
        model.fit(X, y, epochs=1, batch_size=None, verbose=0)


def test_plan_bytes_counts_inputs_activations_gradients_and_the_loss():
    model = build(OPTIMIZERS[0], True, hidden=16)
    rows, widths = 10, 16 + 16 + 3  # Dense(2, 16), Dense(16, 16), Dense(16, 3)
    floats = rows * (2 + 2 * widths + 2 * 3 + 1)
    assert steps.plan_bytes(model.network, rows) == floats * 4 + rows * 8


def test_out_of_memory_in_the_first_planned_step_names_the_batch_size(monkeypatch):
    model = build(OPTIMIZERS[0], True)
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)

    def forward(x, training):
        raise MemoryError("Out of memory allocating 1,228,800 bytes")

    monkeypatch.setattr(model.network, "forward", forward)
    with pytest.raises(MemoryError, match=r"batch_size=64: the plan needs about .* MiB .*"
                                          r"Out of memory allocating"):
        model.fit(X, y, epochs=1, batch_size=64, verbose=0)


def test_steps_are_made_once_per_size_and_options():
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = build(OPTIMIZERS[0], True)
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    made = list(model.steps)
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    assert list(model.steps) == made  # 32 and 28 rows, reused
    model.backend.epilogue_policy = "never"  # another option: a step of its own
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    assert len(model.steps) == 4


def test_past_max_steps_the_least_recently_used_step_is_let_go_with_the_buffers(monkeypatch):
    """A model keeps at most steps.MAX_STEPS steps: one more lets the least recently used go (a
    step taken again counts as the latest), and the buffers the layers and the loss keep with
    it; a step let go is made again should its size come back."""
    monkeypatch.setattr(steps, "MAX_STEPS", 3)
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)  # 150 rows
    model = build(OPTIMIZERS[0], True)
    first = {rows: model.steps.get(rows) for rows in (10, 20, 30)}
    assert model.steps.get(10) is first[10]  # taken again: the latest now
    model.fit(X, y, epochs=1, batch_size=30, shuffle=False, verbose=0)  # takes the 30-row step
    assert [step.rows for step in model.steps] == [20, 10, 30]
    assert all(layer.buffers for layer in model.dense_layers)
    model.steps.get(40)
    assert [step.rows for step in model.steps] == [10, 30, 40]
    assert not any(part.buffers for part in (*model.layers, model.network.loss))
    assert model.steps.get(20) is not first[20]  # made again, in the place of the 10-row step
    assert [step.rows for step in model.steps] == [30, 40, 20]


@pytest.mark.parametrize("backend", [PlanningNumpy, RecordingNumpy])
def test_steps_let_go_and_made_again_train_as_steps_kept(backend, monkeypatch):
    """Fits over five batch sizes in turn, twice, with at most two steps kept (each fit lets
    the last one's go, buffers and recorded graphs with them) give the bits of fits that keep
    every step."""
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    params = []
    for most in (2, 100):
        monkeypatch.setattr(steps, "MAX_STEPS", most)
        model = nn.Sequential([nn.Dense(2, 16, init="he", seed=1), nn.ReLU(),
                               nn.Dense(16, 3, seed=3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=0.1, momentum=0.9), backend=backend())
        for batch_size in (16, 24, 32, 40, 48) * 2:
            model.fit(X, y, epochs=2, batch_size=batch_size, seed=batch_size, verbose=0)
        assert len(model.steps) == min(most, 8)  # 16, 24, 32, 40, 48 rows and the last 6, 22, 30
        params.append(model.get_params())
    for a, b in zip(*params):
        np.testing.assert_array_equal(a, b)


def test_the_steps_of_distributed_training_are_never_let_go(monkeypatch):
    """Every rank must keep the same recorded steps (recording one again makes all ranks agree),
    so past MAX_STEPS the least recently used step made outside distributed training goes, and
    with none of those, none."""
    import types

    monkeypatch.setattr(steps, "MAX_STEPS", 2)
    model = build(OPTIMIZERS[0], True)
    net = model.network
    monkeypatch.setattr(net, "group", types.SimpleNamespace(size=1))  # distributed, one rank
    spread = [model.steps.get(rows) for rows in (10, 20, 30)]
    assert list(model.steps) == spread  # all kept, past MAX_STEPS
    monkeypatch.setattr(net, "group", None)
    alone = model.steps.get(40)
    assert list(model.steps) == [*spread, alone]
    assert list(model.steps)[-1] is model.steps.get(40)
    model.steps.get(50)  # lets the 40-row step go, the one made outside distributed training
    assert [step.rows for step in model.steps] == [10, 20, 30, 50]
