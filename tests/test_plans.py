"""The planned step (what the CuPy backend captures as a CUDA graph), checked through NumPy: it
must give the same numbers as the plain step, bit for bit, and its planning, recording, fallback
and divergence handling must hold."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as nn
from gpunn import plan as plan_module

OPTIMIZERS = [lambda: nn.SGD(lr=0.5, decay=1e-3, momentum=0.9), lambda: nn.Adagrad(lr=0.3, decay=1e-3),
              lambda: nn.RMSprop(lr=0.01, decay=1e-3), lambda: nn.Adam(lr=0.02, decay=5e-7)]


def build(make_opt, planned: bool, hidden=16, dtype="float32"):
    model = nn.Sequential([nn.Dense(2, hidden, init="he", seed=1), nn.ReLU(),
                           nn.Dense(hidden, hidden, init="he", seed=2), nn.ReLU(),
                           nn.Dense(hidden, 3, seed=3)])
    model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend="numpy", dtype=dtype)
    model._force_plans = planned
    return model


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
@pytest.mark.parametrize("batch_size", [None, 64])
def test_planned_training_equals_the_plain_step_bit_for_bit(make_opt, batch_size):
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
    expect = {(150, 64), (150, 22)} if batch_size is None else {(64, 1), (22, 1)}
    assert set(fast._plans) == expect and not plain._plans


def test_planned_train_step_equals_plain():
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    plain, fast = build(OPTIMIZERS[3], False), build(OPTIMIZERS[3], True)
    for _ in range(3):
        assert plain.train_step(X, y) == pytest.approx(fast.train_step(X, y), rel=1e-6)
    for a, b in zip(plain.get_params(), fast.get_params()):
        assert np.array_equal(a, b)


def test_recording_then_replaying(monkeypatch):
    """First run: an ordinary step, then the step is recorded; later runs replay the record."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = build(OPTIMIZERS[0], True)
    recorded, replays = [], []

    def capture(body):
        recorded.append(body)
        return lambda: (replays.append(1), body())

    monkeypatch.setattr(model.backend, "capture", capture)
    reference = build(OPTIMIZERS[0], False)
    model.fit(X, y, epochs=10, batch_size=None, verbose=0)
    reference.fit(X, y, epochs=10, batch_size=None, verbose=0)
    assert len(recorded) == 1 and len(replays) == 0  # 10 epochs: one run of one 10-step plan
    model.fit(X, y, epochs=10, batch_size=None, verbose=0)
    reference.fit(X, y, epochs=10, batch_size=None, verbose=0)
    assert len(recorded) == 1 and len(replays) == 1
    for a, b in zip(reference.get_params(), model.get_params()):
        assert np.array_equal(a, b)
    # the plan holds the buffers its record writes to, whatever the layers' caches do later
    [plan] = model._plans.values()
    held = {id(buf) for part in plan.buffers for buf in part}
    assert id(model.layers[0].output) in held and id(model.loss.dinputs) in held


def test_capture_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = build(OPTIMIZERS[1], True)

    def capture(body):
        raise RuntimeError("operation not permitted when stream is capturing")

    warnings = []
    monkeypatch.setattr(model.backend, "capture", capture)
    monkeypatch.setattr(model.backend, "_said_capture_failed", False, raising=False)
    monkeypatch.setattr(plan_module._log, "warning", lambda msg, *args: warnings.append(msg % args))
    model.fit(X, y, epochs=3, batch_size=16, verbose=0, seed=0)  # two plans: 16 and 12 rows
    assert len(warnings) == 1 and "could not capture the training step" in warnings[0]
    assert all(plan.replay is None for plan in model._plans.values())
    reference = build(OPTIMIZERS[1], False)
    reference.fit(X, y, epochs=3, batch_size=16, verbose=0, seed=0)
    for a, b in zip(reference.get_params(), model.get_params()):
        assert np.array_equal(a, b)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_inside_a_multi_epoch_launch_restores_the_epoch_before(monkeypatch):
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = build(lambda: nn.SGD(lr=1.0), True)
    # Poison the data the plan holds after a few epochs: emulate a loss that turns NaN at epoch 6.
    real = model._planned_epochs
    calls = []

    def planned_epochs(X, y, batch, shuffle, rng, count, on_batch=None):
        calls.append(count)
        result = real(X, y, batch, shuffle, rng, count, on_batch)
        if count > 1:
            result[5] = (float("nan"), 0.0)
        return result

    monkeypatch.setattr(model, "_planned_epochs", planned_epochs)
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 6"):
        model.fit(X, y, epochs=20, batch_size=None, verbose=0)
    assert calls[0] == 20 and calls[1:] == [1] * 5  # the first five epochs run again
    reference = build(lambda: nn.SGD(lr=1.0), False)
    reference.fit(X, y, epochs=5, batch_size=None, verbose=0)
    for a, b in zip(reference.get_params(), model.get_params()):
        assert np.array_equal(a, b)
    assert model.optimizer.iterations == 5


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
        model.compile(loss, nn.SGD(), backend="numpy")
        assert reason in model._plan_problem()
        model._force_plans = True
        model.fit(X, y, epochs=2, verbose=0)  # trains the plain way
        assert not model._plans


def test_out_of_memory_while_planning_names_batch_size_and_bytes(monkeypatch):
    model = build(OPTIMIZERS[0], True, hidden=4096)
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    real_empty = model.backend.empty

    def empty(shape, dtype):
        if shape[0] == 300:
            raise MemoryError("out of memory allocating 4915200 bytes")
        return real_empty(shape, dtype)

    monkeypatch.setattr(model.backend, "empty", empty)
    need = plan_module.plan_bytes(model, 300) / 2**20
    with pytest.raises(MemoryError, match=rf"batch_size=300: the plan needs about {need:.1f} MiB"):
        model.fit(X, y, epochs=1, batch_size=None, verbose=0)


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


def test_out_of_memory_in_the_first_planned_step_names_the_batch_size(monkeypatch):
    model = build(OPTIMIZERS[0], True)
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)

    def planned_step(x, y, totals):
        raise MemoryError("Out of memory allocating 1,228,800 bytes")

    monkeypatch.setattr(model, "_planned_step", planned_step)
    with pytest.raises(MemoryError, match=r"batch_size=64: the plan needs about .* MiB .*"
                                          r"Out of memory allocating"):
        model.fit(X, y, epochs=1, batch_size=64, verbose=0)
