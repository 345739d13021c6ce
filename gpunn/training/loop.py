"""fit's loop: epochs over the data through the network's steps, the rollback of a diverged
epoch, Ctrl-C, and the callbacks that record and tell (callbacks.py).

A launch is one epoch, or for full-batch training many (EPOCHS_PER_LAUNCH recorded in one graph
when planned, ONE_KERNEL_EPOCHS_PER_LAUNCH in one kernel on the one-kernel path); the host reads
the epoch metrics once per launch. Before each launch the network's
state and the random generators are kept, so a diverged epoch or Ctrl-C puts the model back as it
was after the last finished epoch, never halfway.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..layers import Dropout
from ..network import INFERENCE_ROWS, Network
from .batches import epoch_batches, rank_parts
from .callbacks import Callback, History
from .data import Resident, Streamed
from .steps import Steps

#: About how long an eager launch of full-batch epochs may take (they grow to it, up to
#: steps.EPOCHS_PER_LAUNCH, and shrink past it).
LAUNCH_SECONDS = 0.05


class Loop:
    """One call of fit: ``epochs`` epochs in all (``done`` of them already) over prepared data."""

    def __init__(self, network: Network, steps: Steps, data: Resident | Streamed, epochs: int,
                 batch_size: int, shuffle: bool, rng: np.random.Generator, history: History,
                 callbacks: Sequence[Callback] = (), validation: Resident | Streamed | None = None,
                 done: int = 0) -> None:
        self.network, self.steps, self.data = network, steps, data
        self.epochs, self.batch_size, self.shuffle, self.rng = epochs, batch_size, shuffle, rng
        self.history, self.validation, self.done = history, validation, done
        self.callbacks = [history, *callbacks]
        self.previous: Mark | None = None  # where the last launch started
        self.stop_training = False  # a callback may end training after a launch
        self.completed = False  # run() ended without an exception
        self.dropouts = [layer for layer in network.layers if isinstance(layer, Dropout)]

    # ---- where training stands ---------------------------------------------------------------

    def generators(self) -> dict[str, Any]:
        """The states of the shuffling generator and of each Dropout layer's."""
        return {"rng": self.rng.bit_generator.state,
                "dropout_rngs": [layer.rng.bit_generator.state for layer in self.dropouts]}

    def training_state(self) -> dict[str, Any]:
        """Where training stands, for a checkpoint: taken at an epoch boundary."""
        return {"epoch": self.done, **self.generators(), "history": self.history.history,
                "history_epochs": self.history.epoch, "run": self.run_described()}

    def run_described(self) -> dict[str, Any]:
        """What a resume must repeat to go on as this run would have: its rows and batches."""
        return {"rows": self.data.n, "batch_size": self.batch_size, "shuffle": self.shuffle}

    def set_generators(self, state: dict[str, Any]) -> None:
        """The shuffling and dropout generators back as ``state`` recorded them."""
        self.rng.bit_generator.state = state["rng"]
        for layer, saved in zip(self.dropouts, state["dropout_rngs"]):
            layer.rng.bit_generator.state = saved

    def resume(self, state: dict[str, Any], training: dict[str, Any], path: Any,
               warn: bool = True) -> None:
        """Continue from a checkpoint's network state and training state (both checked), with a
        warning (where ``warn``: one rank of several says it) where this fit will not go on as
        the run that wrote ``path`` would have."""
        for problem in self._unlike(training) if warn else ():
            warnings.warn(f"resuming from {path}, {problem}", stacklevel=3)
        self.network.load_state_dict(state)
        self.done = int(training["epoch"])
        self.set_generators(training)
        self.history.history.update({k: list(v) for k, v in training["history"].items()
                                     if k in self.history.history})
        self.history.epoch = list(training["history_epochs"])

    def _unlike(self, training: dict[str, Any]) -> list[str]:
        """How this fit differs from the run a checkpoint records (an older file records none)."""
        problems = []
        run, mine = training.get("run"), self.run_described()
        if run is not None and run != mine:
            problems.append(f"which was written by a fit over {_run_words(run)}; this fit is over "
                            f"{_run_words(mine)}: it will not end as the first run would have")
        if training["epoch"] > self.epochs:
            problems.append(f"which is at epoch {training['epoch']}, past this fit's "
                            f"epochs={self.epochs} (epochs counts all epochs): nothing is trained")
        return problems

    # ---- training ----------------------------------------------------------------------------

    def run(self) -> History:
        """Train until ``epochs`` epochs are done; the History of their metrics."""
        # Full-batch epochs run many per launch, their metrics read at once: EPOCHS_PER_LAUNCH
        # recorded in one graph when planned (ONE_KERNEL_EPOCHS_PER_LAUNCH in one kernel on the
        # one-kernel path); eagerly, as many as take about LAUNCH_SECONDS (so the bar moves and
        # Ctrl-C loses little). One at a time with validation data (the model
        # is evaluated after every epoch) or L1/L2 penalties (added from each epoch's parameters).
        many = self.batch_size >= self.data.n and self.validation is None \
            and not self.network.regularized
        fixed = self.steps.planned
        limit = self.steps.epochs_per_launch(self.data.n) if many else 1
        per_launch = limit if fixed else 1
        # A callback that needs the model at every k-th epoch (a checkpoint every k) gets
        # launches that end on those epochs, however launches grow or a resume began.
        every = [cb.epochs_per_launch for cb in self.callbacks if cb.epochs_per_launch]
        self.network.loss.fit_begin(self.data.y)
        try:
            while self.done < self.epochs and not self.stop_training:
                count = min([per_launch, limit, self.epochs - self.done]
                            + [k - self.done % k for k in every])
                started = time.perf_counter()
                self._launch(count)
                if many and not fixed:
                    quick = time.perf_counter() - started < LAUNCH_SECONDS
                    per_launch = min(2 * count, limit) if quick else max(1, count // 2)
            self.completed = True
        finally:
            self.network.loss.fit_end()
            for cb in self.callbacks:
                cb.on_train_end(self)
        return self.history

    def _launch(self, count: int) -> None:
        """``count`` epochs and what follows them: metrics, validation, callbacks. Ctrl-C, an
        error or a divergence anywhere in it puts everything back as it was before it (or
        further)."""
        start = Mark(self, count)
        try:
            self._epochs(count, start)
        except KeyboardInterrupt:  # back to the last finished launch, then say so and stop
            start.restore(self)
            for cb in self.callbacks:
                cb.on_interrupt(self)
            raise
        except FloatingPointError:  # divergence: already back where its message says
            raise
        except Exception:  # a step, a streamed read or a callback failed: none of it stays
            start.restore(self)
            raise
        self.previous = start
        self.done += count
        if self.done == self.epochs:  # before the final checkpoint is written
            self._check_last_update(start)
        for cb in self.callbacks:
            cb.on_launch_end(self)

    def _epochs(self, count: int, start: Mark) -> None:
        # The epoch's penalty as the book reports it: for a full batch, of the parameters the
        # step started from (with its data loss); for mini-batches, of those at the epoch's end
        # (with the mean data loss of its batches). Penalised networks run an epoch a launch.
        full_batch = self.batch_size >= self.data.n
        reg = self.network.regularization_loss() if full_batch else 0.0
        results = self.run_epochs(count, on_batch=True)
        n = self.data.n
        if not full_batch:
            reg = self.network.regularization_loss()
        for i, (loss_sum, correct) in enumerate(results):
            data_loss = loss_sum / n
            if not math.isfinite(data_loss + reg):
                self._diverged(start, i, data_loss + reg)
            logs = {"loss": data_loss + reg, "accuracy": correct / n, "data_loss": data_loss,
                    "reg_loss": reg}
            if self.validation is not None:
                val = self.network.evaluate_chunks(self.validation.chunks(INFERENCE_ROWS))
                logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.done + i + 1, logs)
        if not self.network.backend.all_finite(self.network.params):
            epoch = self.done + count  # its loss was finite: its update broke the parameters
            self._back_to(start, count - 1)
            raise FloatingPointError(
                f"training diverged: the update of epoch {epoch} made parameters non-finite; "
                f"they are back as they were before that epoch (try a lower lr)")

    def _check_last_update(self, start: Mark) -> None:
        """No epoch measured the parameters the last update left: a forward pass over one batch
        does, so that fit never returns (or checkpoints) a model that predicts NaN."""
        rows = min(self.batch_size, self.data.n)
        loss = self.network.evaluate_chunks(self.data.chunks(rows, limit=rows))["loss"]
        if not math.isfinite(loss):
            epoch = self.done
            self._back_to(start, start.count - 1)
            raise FloatingPointError(
                f"training diverged: after the update of epoch {epoch} the loss is {loss}; the "
                f"parameters are back as they were before that epoch (try a lower lr)")

    def _diverged(self, start: Mark, i: int, loss: float) -> None:
        """The loss of the launch's epoch ``i`` is not finite: the parameters it started from
        are bad. Back to those of the epoch before, whose loss was finite, and stop."""
        epoch = self.done + i + 1
        if i > 0:
            self._back_to(start, i - 1)
        elif self.previous is not None:
            self._back_to(self.previous, self.previous.count - 1)
        else:  # the first epoch of this fit: the parameters it was given, or the data, are bad
            start.restore(self)
            raise FloatingPointError(
                f"the loss is {loss} at epoch {epoch}, the first of this fit: the parameters it "
                f"started from or the data give a non-finite loss; nothing was changed")
        raise FloatingPointError(
            f"training diverged: the loss became {loss} at epoch {epoch}; the parameters are "
            f"back as they were before epoch {epoch - 1}, the last whose loss was finite (try a "
            f"lower lr)")

    def _back_to(self, mark: Mark, epochs: int) -> None:
        """As at ``mark``, then ``epochs`` epochs run again (the good ones of a launch)."""
        mark.restore(self)
        for _ in range(epochs):
            self.run_epochs(1)
        self.done = mark.done + epochs
        self.history.truncate(self.done)

    def run_epochs(self, count: int, on_batch: bool = False) -> list[list[float]]:
        """``count`` epochs (several only for a full batch) through the steps; each epoch's
        (loss sum, correct count), read from the device at once."""
        net, steps, bk = self.network, self.steps, self.network.backend
        steps.totals.fill(0)
        batches = epoch_batches(self.data.n, self.batch_size, self.shuffle, self.rng, bk)
        group = net.group
        if group is not None and group.size > 1:  # every rank takes its part of each batch
            batches = rank_parts(batches, group.size, group.rank)
        try:
            for batch, loadable in self.data.feed(batches):
                net.share, net.whole = batch.share, batch.whole
                if loadable is None:  # this rank's part is empty: it joins the sums all the same
                    for _ in range(count):
                        net.empty_step()
                else:
                    step = steps.get(batch.rows, count)
                    step.load(*loadable)
                    step.run()
                if on_batch:
                    for cb in self.callbacks:
                        cb.on_batch_end(self)
        finally:
            net.share, net.whole = 1.0, 0
        if group is not None:  # the epochs' loss and correct counts of every rank's rows
            group.allreduce(steps.totals[:count])
        totals = bk.to_numpy(steps.totals[:count])  # the one wait for the device
        return totals.tolist()  # Python floats, all at once


class Mark:
    """Where training stood before a launch: the network's state (a copy on the device), the
    generators, the epochs done and recorded, the launch's size."""

    def __init__(self, loop: Loop, count: int = 0) -> None:
        self.state, self.generators = loop.network.state_dict(host=False), loop.generators()
        self.done, self.count = loop.done, count

    def restore(self, loop: Loop) -> None:
        loop.network.load_state_dict(self.state)
        loop.set_generators(self.generators)
        loop.history.truncate(self.done)


def _run_words(run: dict[str, Any]) -> str:
    order = "shuffled" if run["shuffle"] else "in order"
    return f"{run['rows']} rows in batches of {run['batch_size']}, {order}"
