"""training/loop.py: fit's epochs and launches, the rollback of a diverged epoch, Ctrl-C."""

from __future__ import annotations

import numpy as np
import pytest
from support.backends import PlanningNumpy
from support.training import interrupt_at, made_steps

import gpunn as nn
from gpunn.training import loop as loop_module
from gpunn.training.callbacks import Callback


def spiral_model(backend="numpy", dropout=False, seed=0):
    nn.set_seed(seed)
    layers = [nn.Dense(2, 32, init="he"), nn.ReLU()] + ([nn.Dropout(0.1)] if dropout else [])
    model = nn.Sequential(layers + [nn.Dense(32, 3, weight_regularizer_l2=1e-4 if dropout else 0)])
    return model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=1.0), backend=backend)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_inside_a_multi_epoch_launch_restores_the_epoch_before(monkeypatch):
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    reference = spiral_model()
    reference.fit(X, y, epochs=5, batch_size=None, verbose=0)
    model = spiral_model(PlanningNumpy())
    # Emulate a loss that turns NaN at epoch 6 of the first launch.
    real, calls = loop_module.Loop.run_epochs, []

    def run_epochs(self, count, on_batch=False):
        calls.append(count)
        result = real(self, count, on_batch)
        if count > 1:
            result[5] = (float("nan"), 0.0)
        return result

    monkeypatch.setattr(loop_module.Loop, "run_epochs", run_epochs)
    with pytest.raises(FloatingPointError, match="loss became nan at epoch 6"):
        model.fit(X, y, epochs=20, batch_size=None, verbose=0)
    assert calls[0] == 20 and calls[1:] == [1] * 5  # the first five epochs run again
    for a, b in zip(reference.get_params(), model.get_params()):
        assert np.array_equal(a, b)
    assert model.optimizer.iterations == 5


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


def test_a_real_divergence_stops_fit_with_the_parameters_of_the_epoch_before():
    """SGD(lr=1e30): the first epoch's loss is still finite (measured before its update, as
    the book does), the second's is not; fit stops there, with the first epoch's parameters."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    runs = []
    for epochs in (1, 3):
        model = spiral_model(dropout=True)
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=1e30), backend="numpy")
        with np.errstate(all="ignore"):
            if epochs == 1:
                model.fit(X, y, epochs=1, batch_size=None, seed=0, verbose=0)
            else:
                with pytest.raises(FloatingPointError, match="at epoch 2"):
                    model.fit(X, y, epochs=3, batch_size=None, seed=0, verbose=0)
        runs.append(model)
    for a, b in zip(runs[0].get_params(), runs[1].get_params()):
        assert np.array_equal(a, b)
    assert runs[1].optimizer.iterations == 1


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
