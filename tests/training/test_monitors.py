"""training/monitors.py: EarlyStopping, ModelCheckpoint and LambdaCallback, each against what a
run without it does, epoch by epoch."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as nn


def model(seed=0):
    nn.set_seed(seed)
    m = nn.Sequential([nn.Dense(2, 16, init="he"), nn.ReLU(), nn.Dense(16, 3)])
    return m.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend="numpy")


@pytest.fixture
def data():
    X, y = nn.datasets.spiral_data(samples=30, classes=3, seed=0)
    Xv, yv = nn.datasets.spiral_data(samples=10, classes=3, seed=1)
    return X, y, Xv, yv


class Record(nn.Callback):
    """The parameters at the end of every epoch (one epoch a launch)."""

    epochs_per_launch = 1

    def __init__(self):
        self.params = {}

    def on_launch_end(self, loop):
        self.params[loop.done] = loop.network.params.copy()


def test_early_stopping_stops_after_patience_epochs_without_improvement(data):
    X, y, Xv, yv = data
    reference, record = model(), Record()
    full = reference.fit(X, y, epochs=60, batch_size=None, verbose=0, validation_data=(Xv, yv),
                         callbacks=[record])
    val = full["val_loss"]
    # Where a patience of 3 stops: the first epoch 3 epochs past the best so far.
    best, best_epoch, stop = np.inf, 0, None
    for epoch, value in enumerate(val, start=1):
        if value < best:
            best, best_epoch = value, epoch
        elif epoch - best_epoch > 3:
            stop = epoch
            break
    assert stop is not None, "the reference run should overfit within 60 epochs"
    stopper = nn.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    m = model()
    history = m.fit(X, y, epochs=60, batch_size=None, verbose=0, validation_data=(Xv, yv),
                    callbacks=[stopper])
    assert history.epoch == list(range(1, stop + 1)) and history["val_loss"] == val[:stop]
    assert (stopper.stopped_epoch, stopper.best_epoch) == (stop, best_epoch)
    np.testing.assert_array_equal(m.params, record.params[best_epoch])  # the best epoch's
    assert m.optimizer.iterations == stop  # the optimizer state stays as of the last epoch


def test_early_stopping_on_accuracy_waits_for_a_rise_of_min_delta(data):
    X, y, _, _ = data
    stopper = nn.EarlyStopping(monitor="accuracy", patience=0, min_delta=0.5)  # never met
    history = model().fit(X, y, epochs=10, batch_size=None, verbose=0, callbacks=[stopper])
    assert stopper.mode == "max" and history.epoch == [1, 2] and stopper.best_epoch == 1


def test_model_checkpoint_keeps_the_best_model(data, tmp_path):
    X, y, Xv, yv = data
    path = tmp_path / "best.safetensors"
    reference, record = model(), Record()
    val = reference.fit(X, y, epochs=40, batch_size=None, verbose=0, validation_data=(Xv, yv),
                        callbacks=[record])["val_loss"]
    best_epoch = int(np.argmin(val)) + 1
    keeper = nn.ModelCheckpoint(path)
    model().fit(X, y, epochs=40, batch_size=None, verbose=0, validation_data=(Xv, yv),
                callbacks=[keeper])
    assert keeper.saved_epoch == best_epoch
    np.testing.assert_array_equal(nn.load(path).params, record.params[best_epoch])
    every = nn.ModelCheckpoint(tmp_path / "last.safetensors", monitor="loss", save_best_only=False)
    trained = model()
    trained.fit(X, y, epochs=3, batch_size=None, verbose=0, callbacks=[every])
    np.testing.assert_array_equal(nn.load(tmp_path / "last.safetensors").params, trained.params)


def test_lambda_callback_sees_every_epoch_and_batch(data):
    X, y, _, _ = data
    epochs, batches, ended = [], [], []
    cb = nn.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs.append((epoch, logs["loss"])),
                           on_batch_end=lambda: batches.append(1),
                           on_train_end=lambda history: ended.append(history))
    history = model().fit(X, y, epochs=3, batch_size=32, verbose=0, callbacks=[cb])
    assert [e for e, _ in epochs] == [1, 2, 3] and [v for _, v in epochs] == history["loss"]
    assert len(batches) == 3 * 3 and ended == [history]  # 90 samples: 3 batches an epoch


def test_callbacks_are_checked_before_training(data, tmp_path):
    X, y, _, _ = data
    m = model()
    before = m.get_params()
    with pytest.raises(ValueError, match=r"EarlyStopping monitors 'val_loss', which this fit does "
                                         r"not record; it records loss, accuracy \(pass "
                                         r"validation_data or validation_split\)"):
        m.fit(X, y, epochs=3, verbose=0, callbacks=[nn.EarlyStopping()])
    with pytest.raises(FileNotFoundError, match="ModelCheckpoint path .*: folder .* does not exist"):
        nn.ModelCheckpoint(tmp_path / "no" / "m.safetensors")
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        nn.EarlyStopping(mode="up")
    with pytest.raises(TypeError, match="on_epoch_end must be a function or None"):
        nn.LambdaCallback(on_epoch_end=3)
    with pytest.raises(TypeError, match=r"callbacks\[0\] must be a gpunn.callbacks.Callback"):
        m.fit(X, y, verbose=0, callbacks=[print])
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_params()))
    assert m.optimizer.iterations == 0
