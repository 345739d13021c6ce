"""What ``fit`` tells as it trains, each concern a small callback: the History of metrics, a
progress bar, a line per epoch, and checkpoints (on Ctrl-C too).

The loop (loop.py) calls, in order: ``on_epoch_end(loop, epoch, logs)`` for every finished epoch
(``logs``: loss, accuracy, data_loss, reg_loss, and val_loss, val_accuracy with validation data),
``on_batch_end(loop)`` after each mini-batch, ``on_launch_end(loop)`` when the model's state is as
of ``loop.done`` epochs (after every launch, which may hold many full-batch epochs),
``on_interrupt(loop)`` on Ctrl-C (the model put back as of ``loop.done``) and ``on_train_end(loop)``
at the end, however it came.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from .. import io


class Callback:
    """Does nothing; subclasses take the hooks they need."""

    #: k: launches end on every k-th epoch, so ``on_launch_end`` sees epochs k, 2k, ... (None:
    #: any launches).
    epochs_per_launch: int | None = None

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
    """Per-epoch metrics from ``fit``: ``history["loss"]``, ``["accuracy"]``, and ``val_`` ones."""

    def __init__(self, validation: bool) -> None:
        keys = ["loss", "accuracy"] + (["val_loss", "val_accuracy"] if validation else [])
        self.history: dict[str, list[float]] = {key: [] for key in keys}
        self.epoch: list[int] = []

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

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

    def plot(self, path: str | os.PathLike) -> None:
        """Draw loss and accuracy per epoch (train, and validation when there is some) to a PNG."""
        from ..plot import history_curves

        history_curves(self, path)


#: An epoch of this many batches or more gets a progress bar that moves batch by batch.
BATCHES_FOR_A_BATCH_BAR = 50
#: Seconds between two refreshes of the bar's metrics (formatting them costs).
BAR_METRICS_EVERY = 0.2


class ProgressBar(Callback):
    """A tqdm bar over the epochs, or over the batches when an epoch has many of them."""

    def __init__(self, epochs: int, done: int, batches: int) -> None:
        from tqdm.auto import tqdm

        self.per_batch = batches >= BATCHES_FOR_A_BATCH_BAR
        total, initial = (epochs * batches, done * batches) if self.per_batch else (epochs, done)
        self.epochs, self.pending, self.shown = epochs, 0, 0.0
        self.logs: dict[str, float] = {}
        self.bar = tqdm(total=total, initial=initial, unit="batch" if self.per_batch else "epoch",
                        leave=True, dynamic_ncols=True)

    def on_epoch_end(self, loop: Any, epoch: int, logs: dict[str, float]) -> None:
        self.logs = {k: v for k, v in logs.items() if k in loop.history.history}
        if not self.per_batch:
            self.pending += 1

    def on_batch_end(self, loop: Any) -> None:
        if self.per_batch:
            self.bar.update(1)

    def on_launch_end(self, loop: Any) -> None:
        if self.pending:
            self.bar.update(self.pending)
            self.pending = 0
        now = time.monotonic()
        if now - self.shown > BAR_METRICS_EVERY or loop.done == self.epochs:
            self.shown = now
            metrics = {k: f"{v:.4f}" for k, v in self.logs.items()}
            if self.per_batch:
                metrics = {"epoch": str(loop.done), **metrics}
            self.bar.set_postfix(metrics, refresh=False)

    def on_train_end(self, loop: Any) -> None:
        self.bar.close()


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
