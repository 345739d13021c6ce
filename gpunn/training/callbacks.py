"""What ``fit`` tells as it trains, each concern a small callback: the History of metrics, a
progress bar, a line per epoch, and checkpoints (on Ctrl-C too).

The loop (loop.py) calls, in order: ``on_epoch_end(loop, epoch, logs)`` for every finished epoch
(``logs``: loss, accuracy, data_loss, reg_loss, and val_loss, val_accuracy with validation data),
``on_batch_end(loop)`` after each mini-batch, ``on_launch_end(loop)`` when the model's state is as
of ``loop.done`` epochs (after every launch, which may hold many full-batch epochs),
``on_interrupt(loop)`` on Ctrl-C (the model put back as of ``loop.done``) and ``on_train_end(loop)``
at the end, however it came (``loop.completed`` says whether it ended normally). A callback stops
training after the current launch by setting ``loop.stop_training``. monitors.py holds the ones
that watch a metric (EarlyStopping, ModelCheckpoint) and LambdaCallback.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

from .. import io


class Callback:
    """Does nothing; subclasses take the hooks they need."""

    #: k: launches end on every k-th epoch, so ``on_launch_end`` sees epochs k, 2k, ... (None:
    #: any launches).
    epochs_per_launch: int | None = None

    def expects(self, metrics: list[str]) -> None:
        """Raise ValueError if the callback needs a metric not in ``metrics`` (what this fit
        records); ``fit`` asks before training."""

    def on_epoch_end(self, loop: Any, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_batch_end(self, loop: Any) -> None:
        pass

    def on_launch_end(self, loop: Any) -> None:
        pass

    def on_interrupt(self, loop: Any) -> None:
        pass

    def on_train_end(self, loop: Any) -> None:
        pass


class History(Callback):
    """Per-epoch metrics from ``fit``: ``history["loss"]``, ``["accuracy"]`` (when the model
    tracks it), and ``val_`` ones; ``"loss" in history``, ``history.keys()``."""

    def __init__(self, validation: bool, accuracy: bool = True) -> None:
        keys = ["loss", "accuracy"] if accuracy else ["loss"]
        keys += [f"val_{key}" for key in keys] if validation else []
        self.history: dict[str, list[float]] = {key: [] for key in keys}
        self.epoch: list[int] = []

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def keys(self) -> list[str]:
        return list(self.history)

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def on_epoch_end(self, loop: Any, epoch: int, logs: dict[str, float]) -> None:
        for key, values in self.history.items():
            values.append(logs[key])
        self.epoch.append(epoch)

    def truncate(self, epochs: int) -> None:
        """Forget the epochs after ``epochs`` (training was put back to there)."""
        keep = sum(1 for epoch in self.epoch if epoch <= epochs)
        for values in self.history.values():
            del values[keep:]
        del self.epoch[keep:]

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """Loss and accuracy per epoch (train, and validation when there is some): a PNG at
        ``path``, or without one the matplotlib Figure (a notebook shows it)."""
        from ..plot import history_curves

        return history_curves(self, path)


#: An epoch of this many batches or more gets a progress bar that moves batch by batch.
BATCHES_FOR_A_BATCH_BAR = 50
#: The bar's fixed parts; the metrics follow, as many as the terminal's width leaves room for.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"
FIXED_FORMAT = "{l_bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, ]"
#: The narrowest the bar itself may get before metrics are shortened or dropped.
MIN_BAR = 6
SHORT = {"accuracy": "acc", "val_loss": "vloss", "val_accuracy": "vacc"}


def metrics_text(logs: dict[str, float], width: int) -> str:
    """``logs`` (an ``epoch`` first, for batch bars) in at most ``width`` characters: full
    names (``loss 0.1234, accuracy 0.9500``), else short ones (``loss 0.1234 acc 0.950``), else
    the last metrics dropped (an 80-column terminal shows all four of a run with validation)."""
    def text(keys: list[str], short: bool) -> str:
        parts = []
        for k in keys:
            if k == "epoch":
                parts.append(f"epoch {int(logs[k])}")
            elif short:
                parts.append(f"{SHORT.get(k, k)} {logs[k]:.{3 if 'acc' in k else 4}f}")
            else:
                parts.append(f"{k} {logs[k]:.4f}")
        return (" " if short else ", ").join(parts)

    keys = list(logs)
    for candidate in (text(keys, short=False), *(text(keys[:n], short=True)
                                                 for n in range(len(keys), 0, -1))):
        if len(candidate) <= width:
            return candidate
    return ""


class ProgressBar(Callback):
    """A tqdm bar over the epochs, or over the batches when an epoch has many of them, showing
    the metrics of the last finished epoch (never older: they are set just before the bar
    redraws) in as much room as the terminal leaves. It redraws at most 10 times a second, and
    the metrics it shows are the ones the loop has already read from the device: no extra
    synchronisation."""

    def __init__(self, epochs: int, done: int, batches: int) -> None:
        from tqdm.auto import tqdm

        self.per_batch = batches >= BATCHES_FOR_A_BATCH_BAR
        total, initial = (epochs * batches, done * batches) if self.per_batch else (epochs, done)
        self.epochs, self.pending = epochs, 0
        self.logs: dict[str, float] = {}
        self.bar = tqdm(total=total, initial=initial, unit="batches" if self.per_batch else "epochs",
                        leave=True, dynamic_ncols=True, mininterval=0.1, bar_format=BAR_FORMAT)

    def on_epoch_end(self, loop: Any, epoch: int, logs: dict[str, float]) -> None:
        self.logs = {k: v for k, v in logs.items() if k in loop.history.history}
        if self.per_batch:
            self.logs = {"epoch": float(epoch), **self.logs}
        else:
            self.pending += 1

    def on_batch_end(self, loop: Any) -> None:
        if self.per_batch:
            self._show_metrics_if_redrawing()
            self.bar.update(1)

    def on_launch_end(self, loop: Any) -> None:
        if self.pending:
            self._show_metrics_if_redrawing()
            self.bar.update(self.pending)
            self.pending = 0

    def on_train_end(self, loop: Any) -> None:
        self._show_metrics()
        self.bar.refresh()
        self.bar.close()

    def _show_metrics_if_redrawing(self) -> None:
        """Set the metrics when the coming update will redraw the bar (tqdm redraws at most
        every ``mininterval`` seconds), so they are never older than what is drawn."""
        if time.time() - self.bar.last_print_t >= self.bar.mininterval:
            self._show_metrics()

    def _show_metrics(self) -> None:
        if not self.logs:
            return
        width = self.bar.ncols or shutil.get_terminal_size().columns
        fixed = self.bar.format_meter(**{**self.bar.format_dict, "bar_format": FIXED_FORMAT,
                                         "postfix": None, "ncols": None})
        self.bar.set_postfix_str(metrics_text(self.logs, width - len(fixed) - MIN_BAR),
                                 refresh=False)


class EpochLines(Callback):
    """One line per epoch on stderr: ``epoch 3/10 loss 0.1234 accuracy 0.9500``."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, loop: Any, epoch: int, logs: dict[str, float]) -> None:
        metrics = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k in loop.history.history)
        print(f"epoch {epoch}/{self.epochs} {metrics}", file=sys.stderr)


class Checkpoint(Callback):
    """Saves the model and where training stands to ``path`` every ``every`` epochs (if given),
    at the end, and on Ctrl-C as of the last finished epoch; ``fit(resume_from=path)`` goes on
    from there."""

    def __init__(self, path: str | os.PathLike, epochs: int, every: int | None = None) -> None:
        self.path, self.epochs, self.every = path, epochs, every
        self.epochs_per_launch = every

    def due(self, done: int) -> bool:
        return done == self.epochs or bool(self.every and done % self.every == 0)

    def on_launch_end(self, loop: Any) -> None:
        if self.due(loop.done):
            io.save(loop.network, self.path, training=loop.training_state())

    def on_interrupt(self, loop: Any) -> None:
        io.save(loop.network, self.path, training=loop.training_state())
