"""training/loop.py: fit's epochs and launches, the rollback of a diverged epoch, Ctrl-C."""

from __future__ import annotations

import numpy as np
import pytest
from support.backends import PlanningNumpy
from support.training import interrupt_at, made_steps

import gpunn as nn
from gpunn.training import loop as loop_module
from gpunn.training.callbacks import Callback
from gpunn.training.data import Resident


class Record(Callback):
    """Hands each epoch to a History of the test's own."""

    def __init__(self, history):
        self.history = history

    def on_epoch_end(self, loop, epoch, logs):
        self.history.on_epoch_end(loop, epoch, logs)


def spiral_model(backend="numpy", dropout=False, seed=0):
    nn.set_seed(seed)
    layers = [nn.Dense(2, 32, init="he"), nn.ReLU()] + ([nn.Dropout(0.1)] if dropout else [])
    model = nn.Sequential(layers + [nn.Dense(32, 3, weight_regularizer_l2=1e-4 if dropout else 0)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=1.0), backend=backend)
    if backend == "numpy":
        model.backend.one_kernel_trainer = False  # the eager steps, whose launches these tests follow
    return model


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_inside_a_multi_epoch_launch_goes_back_to_the_last_finite_loss(monkeypatch):
    """A non-finite loss at epoch 6 means the parameters epoch 6 started from are bad: back to
    those of epoch 5's start (epoch 5's loss was finite), the history to epoch 4."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    reference = spiral_model()
    reference.fit(X, y, epochs=4, batch_size=None, verbose=0)
    model = spiral_model(PlanningNumpy())
    real, calls = loop_module.Loop.run_epochs, []

    def run_epochs(self, count, on_batch=False):
        calls.append(count)
        result = real(self, count, on_batch)
        if count > 1:
            result[5] = (float("nan"), 0.0)
        return result

    monkeypatch.setattr(loop_module.Loop, "run_epochs", run_epochs)
    history = nn.History(validation=False)
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 6; the parameters are "
                                                 "back as they were before epoch 5"):
        model.fit(X, y, epochs=20, batch_size=None, verbose=0, callbacks=[Record(history)])
    assert calls[0] == 20 and calls[1:] == [1] * 4  # the first four epochs run again
    for a, b in zip(reference.get_params(), model.get_params()):
        assert np.array_equal(a, b)
    assert model.optimizer.iterations == 4


def test_a_nan_at_the_first_epoch_of_a_launch_goes_back_into_the_launch_before(monkeypatch):
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    reference = spiral_model()
    reference.fit(X, y, epochs=1, batch_size=16, seed=0, verbose=0)
    model = spiral_model()
    real = loop_module.Loop.run_epochs
    epochs = []

    def run_epochs(self, count, on_batch=False):
        epochs.append(self.done + 1)
        result = real(self, count, on_batch)
        return [(float("inf"), 0.0)] if self.done == 2 else result

    monkeypatch.setattr(loop_module.Loop, "run_epochs", run_epochs)
    with pytest.raises(FloatingPointError, match="loss became inf at epoch 3; .* before epoch 2"):
        model.fit(X, y, epochs=5, batch_size=16, seed=0, verbose=0)
    for a, b in zip(reference.get_params(), model.get_params()):
        assert np.array_equal(a, b)  # as after epoch 1
    assert model.optimizer.iterations == reference.optimizer.iterations


def test_a_first_epoch_that_is_already_non_finite_changes_nothing():
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = spiral_model()
    model.set_params([np.full_like(p, 1e30) for p in model.get_params()])  # the loss overflows
    before = model.get_params()
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="the first of this fit"):
        model.fit(X * 1e10, y, epochs=3, batch_size=None, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))
    assert model.optimizer.iterations == 0


def test_eager_full_batch_launches_grow_while_quick_and_shrink_when_slow(monkeypatch):
    """How many epochs an eager launch holds changes when the host reads the metrics, never
    the numbers."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    runs = []
    for seconds, epochs in ((float("inf"), 200), (0.0, 200)):  # every launch quick, or slow
        monkeypatch.setattr(loop_module, "LAUNCH_SECONDS", seconds)
        model = spiral_model()
        runs.append((model, model.fit(X, y, epochs=epochs, batch_size=None, verbose=0)))
    (quick, h_quick), (slow, h_slow) = runs
    # 1 + 2 + ... + 64 = 127 epochs, then 64 and the last 9
    assert {steps for rows, steps in made_steps(quick)} == {1, 2, 4, 8, 16, 32, 64, 9}
    assert made_steps(slow) == {(60, 1): "eager"}
    assert h_quick.history == h_slow.history and quick.optimizer.iterations == 200
    for a, b in zip(quick.get_params(), slow.get_params()):
        assert np.array_equal(a, b)


def test_a_real_divergence_stops_fit_with_parameters_whose_loss_was_finite():
    """SGD(lr=1e30): epoch 1's loss is finite (measured before its update, as the book does);
    its update blows the weights up so far that epoch 2's penalty overflows float32. Fit stops
    at epoch 2 and goes back to the parameters epoch 1 started from, the last with a finite
    loss, and they predict finite numbers."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = spiral_model(dropout=True)
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=1e30), backend="numpy")
    before = model.get_params()
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="at epoch 2; .* before epoch 1"):
        model.fit(X, y, epochs=3, batch_size=None, seed=0, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))
    assert model.optimizer.iterations == 0 and np.isfinite(model.predict(X)).all()


def test_the_last_update_of_a_fit_is_checked_too():
    """SGD(lr=1e37) for one epoch: the loss of the epoch is finite, its update is not."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = spiral_model()
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=1e37), backend="numpy")
    before = model.get_params()
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError,
                                                  match="after the update of epoch 1 the loss is nan"):
        model.fit(X, y, epochs=1, batch_size=None, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))
    assert np.isfinite(model.predict(X)).all()


def test_full_batches_launch_many_epochs_when_planned_and_one_otherwise():
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    planned = spiral_model(PlanningNumpy())
    planned.fit(X, y, epochs=70, batch_size=None, verbose=0)
    assert made_steps(planned) == {(60, 64): "planned", (60, 6): "planned"}
    # validation after every epoch: one epoch a launch
    fresh = spiral_model(PlanningNumpy())
    fresh.fit(X, y, epochs=3, batch_size=None, verbose=0, validation_data=(X, y))
    assert made_steps(fresh) == {(60, 1): "planned"}


def test_a_checkpoint_every_k_epochs_limits_launches_to_k(tmp_path):
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = spiral_model(PlanningNumpy())
    model.fit(X, y, epochs=12, batch_size=None, verbose=0, checkpoint=tmp_path / "c.safetensors",
              checkpoint_every=5)
    assert made_steps(model) == {(60, 5): "planned", (60, 2): "planned"}


class LaunchEnds(Callback):
    epochs_per_launch = 5

    def __init__(self):
        self.ends = []

    def on_launch_end(self, loop):
        self.ends.append(loop.done)


@pytest.mark.parametrize("start", [0, 7])
def test_launches_that_grow_still_end_on_every_kth_epoch(start, monkeypatch):
    """Eager full-batch launches double while quick (1, 2, 4, ...); a checkpoint every 5 epochs
    must still see epochs 5, 10, 15, ..., also when training began at epoch 7."""
    monkeypatch.setattr(loop_module, "LAUNCH_SECONDS", 1e9)  # always quick: always growing
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = spiral_model()
    model.fit(X, y, epochs=start, batch_size=None, verbose=0)
    ends = LaunchEnds()
    loop = loop_module.Loop(model.network, model.steps, Resident(*model.network.prepare(X, y)), 63, 60, False,
                            np.random.default_rng(0), nn.History(False), [ends], done=start)
    loop.run()
    assert {5 * k for k in range(start // 5 + 1, 13)} <= set(ends.ends) and ends.ends[-1] == 63
    assert any(b - a > 1 for a, b in zip(ends.ends, ends.ends[1:]))  # and they did grow


def test_ctrl_c_puts_the_model_back_at_the_last_finished_epoch(monkeypatch):
    X, y = nn.datasets.spiral_data(samples=40, classes=3, seed=0)
    whole = spiral_model(dropout=True)
    whole.fit(X, y, epochs=4, batch_size=16, seed=2, verbose=0)
    model = spiral_model(dropout=True)
    interrupt_at(monkeypatch, model, 4 * 8 + 3)  # 8 batches an epoch: stop inside epoch 5
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, epochs=6, batch_size=16, seed=2, verbose=0)
    assert model.optimizer.iterations == 4 * 8
    for a, b in zip(whole.get_params(), model.get_params()):
        assert np.array_equal(a, b)


def test_history_reports_the_loss_the_book_reports():
    """A full-batch epoch's loss is its data loss plus the penalty of the parameters it started
    from (measured together, before the update, as the book prints them); a mini-batch epoch's
    is the mean data loss of its batches plus the penalty at the epoch's end (the book's
    calculate_accumulated)."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 16, weight_regularizer_l2=0.1), nn.ReLU(), nn.Dense(16, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend="numpy", dtype="float64")
    logs = []
    record = type("Record", (Callback,), {"on_epoch_end": lambda self, loop, e, lg: logs.append(lg)})
    penalty = model.network.regularization_loss()
    expected = model.evaluate(X, y)["loss"] + penalty
    history = model.fit(X, y, epochs=1, batch_size=None, verbose=0, callbacks=[record()])
    assert history["loss"] == [expected] and logs[0]["reg_loss"] == penalty
    assert model.network.regularization_loss() != penalty  # the update moved it
    history = model.fit(X, y, epochs=1, batch_size=16, shuffle=False, verbose=0,
                        callbacks=[record()])
    assert logs[1]["reg_loss"] == model.network.regularization_loss()
    assert history["loss"] == [logs[1]["data_loss"] + logs[1]["reg_loss"]]


@pytest.mark.parametrize("failing", ["step", "streamed read", "callback"])
def test_an_error_inside_an_epoch_puts_the_model_back_at_the_last_finished_epoch(monkeypatch,
                                                                                 failing):
    """A step, a streamed read (a disk that went away) or a callback at the epoch's end that
    fails in epoch 5 leaves the model and its optimizer as they were after epoch 4, and fit
    says what failed; fitting on from there gives what an unbroken run gives."""
    from gpunn.training.data import Streamed

    X, y = nn.datasets.spiral_data(samples=40, classes=3, seed=0)
    stream = failing == "streamed read"
    whole = spiral_model(dropout=True)
    whole.fit(X, y, epochs=4, batch_size=16, seed=2, verbose=0, stream=stream)
    model = spiral_model(dropout=True)
    calls, callbacks = [], []
    if failing == "callback":
        class Failing(Callback):
            def on_epoch_end(self, loop, epoch, logs):
                if epoch == 5:
                    raise OSError("the disk went away")

        callbacks.append(Failing())
    elif stream:  # the 35th batch read fails: 8 batches an epoch, so inside epoch 5
        rows = Streamed.rows

        def failing(self, index, out=None):
            calls.append(1)
            if len(calls) == 4 * 8 + 3:
                raise OSError("the disk went away")
            return rows(self, index, out)

        monkeypatch.setattr(Streamed, "rows", failing)
    else:
        real_step = model.network.step

        def failing(xb, yb):
            calls.append(1)
            if len(calls) == 4 * 8 + 3:
                raise OSError("the disk went away")
            return real_step(xb, yb)

        monkeypatch.setattr(model.network, "step", failing)
    with pytest.raises(OSError, match="the disk went away"):
        model.fit(X, y, epochs=6, batch_size=16, seed=2, verbose=0, stream=stream,
                  callbacks=callbacks)
    assert model.optimizer.iterations == whole.optimizer.iterations == 4 * 8
    for a, b in zip(whole.get_params(), model.get_params()):
        assert np.array_equal(a, b)
    monkeypatch.undo()
    whole.fit(X, y, epochs=2, batch_size=16, seed=3, verbose=0)
    model.fit(X, y, epochs=2, batch_size=16, seed=3, verbose=0)
    for a, b in zip(whole.get_params(), model.get_params()):
        assert np.array_equal(a, b)
