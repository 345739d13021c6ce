"""training/callbacks.py: History, the progress bar, lines per epoch, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from support.training import interrupt_at

import gpunn as nn


def spiral_model():
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 16), nn.ReLU(), nn.Dense(16, 3)])
    return model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend="numpy")


def test_history_records_every_epoch_with_validation():
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    history = model.fit(X, y, epochs=4, batch_size=8, seed=0, verbose=0, validation_data=(X, y))
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == [1, 2, 3, 4] and all(len(v) == 4 for v in history.history.values())
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(X, y)["loss"])
    assert repr(history).startswith("History(epochs=4, last={'loss': ")


def test_progress_bar_and_lines(capsys):
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    model.fit(X, y, epochs=3, verbose=1)
    assert "3/3" in capsys.readouterr().err
    model.fit(X, y, epochs=2, verbose=2)
    err = capsys.readouterr().err
    assert "epoch 1/2 loss" in err and "epoch 2/2 loss" in err


def test_the_bar_shows_the_metrics_of_the_epoch_it_shows_in_the_terminals_width(capsys, monkeypatch):
    """Each time the bar is drawn, the loss beside "n/3000" is epoch n's (it once showed the
    first epoch's at epoch 1332), and the line fits an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    history = spiral_model().fit(X, y, epochs=3000, batch_size=None, verbose=1)
    drawn = [line for line in capsys.readouterr().err.replace("\n", "\r").split("\r") if "loss" in line]
    assert len(drawn) >= 2
    for line in drawn:
        n = int(line.split("|")[2].split("/")[0])
        loss, accuracy = (float(line.split(f"{key} ")[1].split(",")[0].rstrip("]"))
                          for key in ("loss", "accuracy"))
        assert (loss, accuracy) == (round(history["loss"][n - 1], 4),
                                    round(history["accuracy"][n - 1], 4)), line
        assert len(line) <= 80


def test_metrics_shorten_before_they_are_dropped():
    from gpunn.training.callbacks import metrics_text

    logs = {"loss": 0.12345, "accuracy": 0.95, "val_loss": 0.2, "val_accuracy": 0.9}
    assert metrics_text(logs, 100) == "loss 0.1235, accuracy 0.9500, val_loss 0.2000, val_accuracy 0.9000"
    assert metrics_text(logs, 45) == "loss 0.1235 acc 0.950 vloss 0.2000 vacc 0.900"
    assert metrics_text(logs, 30) == "loss 0.1235 acc 0.950"
    assert metrics_text({"epoch": 3.0, "loss": 0.5}, 40) == "epoch 3, loss 0.5000"
    assert metrics_text(logs, 5) == ""


def test_long_epochs_get_a_per_batch_bar(capsys):
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    model = spiral_model()
    model.fit(X, y, epochs=2, batch_size=4, verbose=1)  # 75 batches an epoch
    err = capsys.readouterr().err
    assert "150/150 batches" in err and "epoch 2" in err


def test_checkpoint_every_k_epochs(tmp_path, monkeypatch):
    X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
    model = spiral_model()
    saves = []
    real_save = nn.io.save
    monkeypatch.setattr(nn.io, "save", lambda net, path, training=None: (
        saves.append(training["epoch"]), real_save(net, path, training)))
    model.fit(X, y, epochs=7, batch_size=None, verbose=0, checkpoint=tmp_path / "c.safetensors",
              checkpoint_every=3)
    assert saves == [3, 6, 7]
    assert nn.load(tmp_path / "c.safetensors").optimizer.iterations == 7


def test_ctrl_c_saves_the_last_finished_epoch_and_resume_is_exact(tmp_path, monkeypatch):
    X, y = nn.datasets.spiral_data(samples=40, classes=3, seed=0)
    nn.set_seed(0)
    make = lambda: nn.Sequential([nn.Dense(2, 32, init="he"), nn.ReLU(), nn.Dropout(0.1),  # noqa: E731
                                  nn.Dense(32, 3, weight_regularizer_l2=1e-4)])
    whole = make().compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01, decay=1e-3), backend="numpy")
    start = whole.get_params()
    whole.fit(X, y, epochs=6, batch_size=16, seed=2, verbose=0)
    ck = tmp_path / "ck.safetensors"
    model = make().compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01, decay=1e-3), backend="numpy")
    model.set_params(start)
    interrupt_at(monkeypatch, model, 4 * 8 + 3)  # 8 batches an epoch: stop inside epoch 5
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, epochs=6, batch_size=16, seed=2, verbose=0, checkpoint=ck,
                  checkpoint_every=100)
    saved = nn.load(ck)
    assert saved.optimizer.iterations == 4 * 8  # as of the end of epoch 4
    resumed = make().compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01, decay=1e-3), backend="numpy")
    resumed.fit(X, y, epochs=6, batch_size=16, seed=2, verbose=0, resume_from=ck)
    for a, b in zip(whole.get_params(), resumed.get_params()):
        np.testing.assert_array_equal(a, b)
