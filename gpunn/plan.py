"""Planned training steps: the fast path of ``fit`` on backends with graphs (CuPy).

A plan fixes, for one batch size, every buffer a step touches: static input buffers the batch
is gathered into, the layers' activation and gradient buffers, the loss and correct-count totals
and the learning-rate schedule, all on the device. Its first run is an ordinary step (warm-up:
kernels compile, buffers are allocated); then the step is captured as a CUDA graph and each later
run replays it, one launch instead of dozens. Full-batch training captures several epochs per
graph. Where capture is not possible the same step runs eagerly, with the same kernels, so the
numbers are the same either way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import Sequential

_log = logging.getLogger("gpunn")

#: Full-batch epochs recorded in one graph (the book's 10,001 epochs: ~157 launches).
EPOCHS_PER_LAUNCH = 64


class StepPlan:
    """``steps`` training steps on batches of ``rows`` samples, recorded once, replayed after."""

    def __init__(self, model: Sequential, rows: int, steps: int) -> None:
        bk = model.backend
        self.model, self.rows, self.steps = model, rows, steps
        try:
            self.x = bk.empty((rows, model.n_inputs), model.dtype)
            self.y = bk.empty((rows,), np.int64)
        except Exception as exc:
            raise _out_of_memory(model, rows, exc) from exc
        self.loaded: Any = None  # the data array last copied whole into x (full batch)
        self.replay: Any = None
        self.recorded = False
        self.buffers: list[list[Any]] = []
        # The book's network, small enough: all steps in one kernel launch (CuPy, when enabled).
        self.small_net = model._small_net(rows)

    def load(self, X: Any, y: Any) -> None:
        """Copy a whole batch into the static inputs, unless it is the one already there."""
        if self.loaded is not X:
            self.x[...] = X
            self.y[...] = y
            self.loaded = X

    def body(self) -> None:
        if self.small_net:
            self.model._small_net_steps(self.x, self.y, self.steps)
            return
        for i in range(self.steps):
            self.model._planned_step(self.x, self.y, self.model._totals[i])

    def run(self) -> None:
        """Run the steps: replay the graph, or run them and then try to record one."""
        if self.replay is not None:
            self.replay()
        else:
            if not self.recorded:  # the first run allocates the layers' buffers for this size
                try:
                    self.body()
                except MemoryError as exc:  # CuPy's OutOfMemoryError is one
                    raise _out_of_memory(self.model, self.rows, exc) from exc
            else:
                self.body()
            if not self.recorded:
                self.recorded = True
                self.replay = self._record()
                # A graph writes to the buffers it was recorded with, wherever the layers keep
                # theirs later: hold them, so their memory is never handed to anything else.
                self.buffers = [list(part._buffers.values())
                                for part in [*self.model.layers, self.model.loss]]
        for _ in range(self.steps):
            self.model.optimizer.mirror_step()

    def _record(self) -> Any:
        try:
            return self.model.backend.capture(self.body)
        except Exception as exc:  # a capture that fails leaves the eager step, which is right
            if not getattr(self.model.backend, "_said_capture_failed", False):
                self.model.backend._said_capture_failed = True
                _log.warning("gpunn: could not capture the training step as a CUDA graph "
                             "(%s: %s); running it eagerly", type(exc).__name__, exc)
            return None


def plan_bytes(model: Sequential, rows: int) -> int:
    """Device bytes a plan for ``rows`` samples needs: inputs, each layer's output and input
    gradient (and ReLU mask, where the backend keeps one), and the loss's probabilities,
    gradient and per-sample losses."""
    itemsize = np.dtype(model.dtype).itemsize
    widths = [layer.n_neurons for layer in model.dense_layers]
    floats = rows * (model.n_inputs + 2 * sum(widths) + 2 * model.n_outputs + 1)
    masks = [model.backend.relu_mask_shape(rows, layer.n_neurons)
             for layer in model.dense_layers if layer.grads_from_above]
    return floats * itemsize + rows * 8 + sum(r * c for r, c in filter(None, masks))


def _out_of_memory(model: Sequential, rows: int, exc: Exception) -> Exception:
    need = plan_bytes(model, rows)
    return MemoryError(f"not enough device memory to plan a training step for batch_size={rows}: "
                       f"the plan needs about {need / 2**20:.1f} MiB besides the parameters "
                       f"({type(exc).__name__}: {exc}); try a smaller batch_size")
