"""Callbacks that watch a metric or run the user's code, as Keras users know them:
``EarlyStopping`` (with ``restore_best_weights``), ``ModelCheckpoint`` (keeping the best model)
and ``LambdaCallback``. Pass them to ``fit(callbacks=[...])``.

A monitored metric is one ``fit`` records: ``loss`` (and ``accuracy`` when tracked), and
``val_loss`` / ``val_accuracy`` with validation data; ``fit`` checks the name before training.
Watching a metric means one epoch per launch (the parameters of every epoch are seen), so a
full-batch run loses its many-epochs-per-launch speed while they are on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from .. import checks, io
from ..files import check_writable
from .callbacks import Callback


class Monitor(Callback):
    """What the metric watchers share: the metric, which way is better, the best value seen."""

    epochs_per_launch = 1

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a metric name such as 'val_loss'; got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}")
        self.monitor = monitor
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.min_delta = checks.real_number(min_delta, "min_delta", 0)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.last: float | None = None

    def expects(self, metrics: list[str]) -> None:
        if self.monitor in metrics:
            return
        hint = " (pass validation_data or validation_split)" \
            if self.monitor.startswith("val_") and "val_loss" not in metrics else ""
        raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which this fit does "
                         f"not record; it records {', '.join(metrics)}{hint}")

    def improved(self, value: float) -> bool:
        """``value`` beats the best by more than min_delta (then it is the best)."""
        better = value < self.best - self.min_delta if self.mode == "min" \
            else value > self.best + self.min_delta
        if better:
            self.best = value
        return better

    def on_epoch_end(self, loop: Any, epoch: int, logs: dict[str, float]) -> None:
        self.last = logs[self.monitor]


class EarlyStopping(Monitor):
    """Stop ``fit`` once ``monitor`` has not improved (by more than ``min_delta``) for
    ``patience`` epochs in a row. With ``restore_best_weights``, a fit that ends normally leaves
    the parameters of its best epoch (the optimizer state stays as of the last one, as in Keras);
    ``stopped_epoch`` and ``best_epoch`` say what happened."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = checks.whole_number(patience, "patience", 0)
        if not isinstance(restore_best_weights, bool):
            raise TypeError(f"restore_best_weights must be True or False; got {restore_best_weights!r}")
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.best_params: Any = None

    def on_launch_end(self, loop: Any) -> None:
        if self.last is None:
            return
        if self.improved(self.last):
            self.wait, self.best_epoch = 0, loop.done
            if self.restore_best_weights:
                self.best_params = loop.network.params.copy()  # a copy on the device
        else:
            self.wait += 1
            if self.wait > self.patience:
                self.stopped_epoch = loop.done
                loop.stop_training = True

    def on_train_end(self, loop: Any) -> None:
        if self.restore_best_weights and loop.completed and self.best_params is not None \
                and self.best_epoch != loop.done:
            loop.network.params[...] = self.best_params


class ModelCheckpoint(Monitor):
    """Save the model to ``path`` (a file ``gpunn.load`` reads) after each epoch whose
    ``monitor`` is the best so far, or, with ``save_best_only=False``, after every epoch. The
    path is checked when the callback is made, before any training."""

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = True, min_delta: float = 0.0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.path = check_writable(path, "ModelCheckpoint path")
        self.save_best_only = bool(save_best_only)
        self.saved_epoch = 0

    def on_launch_end(self, loop: Any) -> None:
        if self.last is None:
            return
        if self.improved(self.last) or not self.save_best_only:
            if getattr(loop.network.group, "rank", 0) == 0:  # distributed: rank 0 writes
                io.save(loop.network, self.path)
            self.saved_epoch = loop.done


class LambdaCallback(Callback):
    """Your functions, called as ``fit`` goes: ``on_epoch_end(epoch, logs)`` after every epoch
    (``logs`` as History records them, plus data_loss and reg_loss), ``on_batch_end()`` after
    every mini-batch, ``on_train_end(history)`` at the end, however it came."""

    def __init__(self, on_epoch_end: Callable[[int, dict[str, float]], Any] | None = None,
                 on_batch_end: Callable[[], Any] | None = None,
                 on_train_end: Callable[[Any], Any] | None = None) -> None:
        for name, fn in (("on_epoch_end", on_epoch_end), ("on_batch_end", on_batch_end),
                         ("on_train_end", on_train_end)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function or None; got {type(fn).__name__}")
        self.epoch_fn, self.batch_fn, self.end_fn = on_epoch_end, on_batch_end, on_train_end

    def on_epoch_end(self, loop: Any, epoch: int, logs: dict[str, float]) -> None:
        if self.epoch_fn is not None:
            self.epoch_fn(epoch, dict(logs))

    def on_batch_end(self, loop: Any) -> None:
        if self.batch_fn is not None:
            self.batch_fn()

    def on_train_end(self, loop: Any) -> None:
        if self.end_fn is not None:
            self.end_fn(loop.history)
