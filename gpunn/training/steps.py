"""Training steps: the one place that decides how a network's optimizer steps run.

- "eager": forward, loss, backward and update as they come. Any network, any backend.
- "planned": for one batch size, every buffer a step touches is fixed (static inputs the batch is
  gathered into, the layers' activations and gradients, the optimizer's device schedule, the
  epoch's loss and correct-count totals), so the step can be recorded as a CUDA graph and
  replayed (graph.py). Full-batch training records EPOCHS_PER_LAUNCH steps per graph.
- "one-kernel": the book's Dense -> ReLU -> Dense, small enough for one block's shared memory:
  the steps of a launch run in one kernel (kernels.cu's ``train_in_one_kernel``), also replayed;
  full-batch training runs up to ONE_KERNEL_EPOCHS_PER_LAUNCH of them in one launch.

``make_step`` picks the fastest path that can run, once per batch size; ``why_not`` says why a
path cannot, in the words ``gpunn info`` and the tests read. Planned and one-kernel steps compute
what the eager step does, with the same kernels, so their numbers agree (bit for bit on NumPy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends.bf16 import BF16_BITS
from ..layers import Dense, Linear, ReLU
from ..losses import SoftmaxCrossEntropy
from ..network import Network
from .graph import Graph

#: Full-batch epochs recorded in one graph (the book's 10,001 epochs: ~157 launches).
EPOCHS_PER_LAUNCH = 64
#: Full-batch epochs in one launch of the one-kernel trainer: one kernel whatever their number, so
#: more of them cost nothing to record, and each launch's host work (the read of its metrics, the
#: parameter check, the copy kept for a rollback) is paid 10 times instead of 157 in the book's
#: run. A launch stays short: about 13 ms of the book's epochs on a CPU core.
ONE_KERNEL_EPOCHS_PER_LAUNCH = 1024
#: Steps a model keeps at most. Each holds its inputs' buffers and, recorded, a graph that holds
#: every buffer its step writes; a fit makes two (its batches and the last, shorter one; or a
#: full-batch launch and the last, shorter launch), and each train_step of another size one more.
#: Past this many, the one used least recently is let go, with the layers' buffers (the steps
#: kept hold theirs through their graphs, or make them again), and made again should it come back;
#: the steps of distributed training are kept.
MAX_STEPS = 8
#: The paths, fastest last.
PATHS = ("eager", "planned", "one-kernel")


def why_not(network: Network, path: str, rows: int | None = None) -> str | None:
    """Why ``path`` cannot take this network's steps (on batches of ``rows`` samples), or None."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(map(repr, PATHS))}; got {path!r}")
    if path == "eager":
        return None
    if not isinstance(network.loss, SoftmaxCrossEntropy):
        return f"{type(network.loss).__name__} is not planned (only SoftmaxCrossEntropy)"
    for layer in network.layers:
        if not isinstance(layer, (Dense, ReLU, Linear)):
            return f"{layer!r} is not planned (Dense, ReLU and Linear are)"
    if network.regularized:
        return "L1/L2 penalties are not planned"
    if path == "planned":
        return network.backend.why_not("planned_steps")
    # The one-kernel trainer needs no planned steps of the backend's (the NumPy backend's
    # compiled trainer runs where the rest take eager steps), only the network's plan.
    if [type(layer) for layer in network.layers] != [Dense, ReLU, Dense]:
        return "the one-kernel trainer takes Dense -> ReLU -> Dense networks only"
    if network.group is not None and network.group.size > 1:
        return "the one-kernel trainer does not sum gradients over ranks (distributed training)"
    if network.backend.precision == "bf16":
        return "the one-kernel trainer computes in the model's dtype, not with bf16 GEMMs"
    first, second = network.dense_layers
    return network.backend.why_not("one_kernel_trainer", rows=rows, dtype=network.dtype,
                                   sizes=(first.n_inputs, first.n_neurons, second.n_neurons))


def choose(network: Network, rows: int) -> str:
    """The fastest path that can take this network's steps on batches of ``rows`` samples."""
    return next(path for path in reversed(PATHS) if why_not(network, path, rows) is None)


class Steps:
    """The steps a network has made, one per batch size and count (made once: their graphs
    hold device buffers), and the totals they add each step's loss sum and correct count to,
    row by row (a row for each epoch a launch may take)."""

    def __init__(self, network: Network) -> None:
        self.network = network
        rows = max(EPOCHS_PER_LAUNCH, ONE_KERNEL_EPOCHS_PER_LAUNCH)
        self.totals = network.backend.zeros((rows, 2), np.float64)
        self._made: dict[tuple, Any] = {}

    def epochs_per_launch(self, rows: int) -> int:
        """The most full-batch epochs of ``rows`` samples one launch takes."""
        one_kernel = choose(self.network, rows) == "one-kernel"
        return ONE_KERNEL_EPOCHS_PER_LAUNCH if one_kernel else EPOCHS_PER_LAUNCH

    @property
    def planned(self) -> bool:
        """Whether this network's steps are planned."""
        return why_not(self.network, "planned") is None

    def get(self, rows: int, steps: int = 1) -> Any:
        """The step object taking ``steps`` optimizer steps on batches of ``rows`` samples."""
        # A recorded step bakes in whether gradients are summed over ranks, and this rank's
        # share of the whole batch (distributed training).
        net = self.network
        key = (rows, steps, net.backend.options, net.share, net.group is not None)
        step = self._made.pop(key, None)  # put back last: the most recently used
        if step is None:
            if len(self._made) >= MAX_STEPS:
                # Not a step of distributed training: every rank must keep the same ones, or one
                # would record a step again (all ranks agreeing) while another replays its own.
                oldest = next((made for made in self._made if not made[-1]), None)
                if oldest is not None:
                    self._let_go(oldest)
            step = make_step(self.network, rows, steps, self.totals)
        self._made[key] = step
        return step

    def _let_go(self, key: tuple) -> None:
        """Drop a step and the buffers the layers and the loss keep, so that what only it used
        is freed (the steps kept hold theirs through their graphs, or make them again)."""
        del self._made[key]
        for part in (*self.network.layers, self.network.loss):
            part.buffers.clear()

    def __iter__(self) -> Any:
        return iter(self._made.values())

    def __len__(self) -> int:
        return len(self._made)


def x_dtype(network: Network) -> Any:
    """The planned steps' input buffer's dtype: the model's, or under precision "bf16" with a
    Dense layer first, bfloat16. That layer's GEMM reads the data rounded to bfloat16, and
    nothing else reads the data, so a batch is rounded once as it is loaded (a shuffled one
    as it is gathered) instead of by every step's forward pass."""
    first = network.layers[0]
    if network.backend.precision == "bf16" and isinstance(first, Dense):
        return BF16_BITS
    return network.dtype


def make_step(network: Network, rows: int, steps: int, totals: Any) -> Any:
    """A step object for the fastest path that can run: ``load`` a batch into it, ``run`` it."""
    path = choose(network, rows)
    cls = {"eager": EagerSteps, "planned": PlannedSteps, "one-kernel": OneKernelSteps}[path]
    return cls(network, rows, steps, totals)


class EagerSteps:
    """``steps`` optimizer steps per run, one after another on the batch loaded; step i adds its
    loss sum and correct count to ``totals[i]`` (they stay on the device until the host reads
    them once per launch)."""

    path = "eager"

    def __init__(self, network: Network, rows: int, steps: int, totals: Any) -> None:
        self.network, self.rows, self.steps, self.totals = network, rows, steps, totals
        self.x = self.y = None
        self._gathered: dict[tuple, Any] = {}

    def load(self, X: Any, y: Any, start: int, stop: int, order: Any = None) -> None:
        """Rows ``start:stop`` of the data, or of ``order`` (a shuffle) when one is given."""
        if order is None:
            whole = start == 0 and stop == X.shape[0]
            self.x, self.y = (X, y) if whole else (X[start:stop], y[start:stop])
            return
        rows, bk = order[start:stop], self.network.backend
        self.x = bk.take_rows(X, rows, out=self._buffer("x", X, stop - start))
        self.y = bk.take_rows(y, rows, out=self._buffer("y", y, stop - start))

    def _buffer(self, name: str, like: Any, rows: int) -> Any:
        key = (name, (rows,) + like.shape[1:], like.dtype)
        if key not in self._gathered:
            self._gathered[key] = self.network.backend.empty(key[1], like.dtype)
        return self._gathered[key]

    def run(self, metrics: bool = True) -> None:
        """The steps; with ``metrics``, each one's loss sum and correct count added to the totals."""
        net, totals = self.network, self.totals
        for i in range(self.steps):
            losses, outputs = net.step(self.x, self.y)
            if metrics:
                totals[i, 0] += losses.sum(dtype=np.float64)
                totals[i, 1] += net.loss.count_correct(outputs, self.y)


class PlannedSteps:
    """``steps`` planned steps on static inputs of ``rows`` samples, recorded once and replayed;
    step i adds its loss sum and correct count to ``totals[i]``."""

    path = "planned"

    def __init__(self, network: Network, rows: int, steps: int, totals: Any) -> None:
        bk = network.backend
        self.network, self.rows, self.steps, self.totals = network, rows, steps, totals
        try:
            self.x = bk.empty((rows, network.n_inputs), x_dtype(network))
            self.y = bk.empty((rows,), np.int64)
        except Exception as exc:
            raise out_of_memory(network, rows, exc) from exc
        self.loaded: Any = None  # the data array last copied whole into x (full batch)
        parts = [*network.layers, network.loss]
        # Distributed: all ranks replay or none. A batch smaller than the group leaves some
        # ranks an empty part (they take no planned step, so cannot agree): not recorded.
        group = network.group if network.group is not None and network.group.size > 1 else None
        capture = group is None or network.whole >= group.size
        self.graph = Graph(self.body, bk, keep=lambda: [list(p.buffers.values()) for p in parts],
                           agree=group.all_agree if group is not None and capture else None,
                           capture=capture)

    def load(self, X: Any, y: Any, start: int, stop: int, order: Any = None) -> None:
        """Copy rows ``start:stop`` (of ``order``, when given) into the static inputs; a whole
        data set already there is not copied again."""
        bk = self.network.backend
        if order is not None:
            bk.take_rows(X, order[start:stop], out=self.x)
            bk.take_rows(y, order[start:stop], out=self.y)
            self.loaded = None
        elif start == 0 and stop == X.shape[0]:
            if self.loaded is not X:
                self._copy(X)
                self.y[...] = y
                self.loaded = X
        else:
            self._copy(X[start:stop])
            self.y[...] = y[start:stop]
            self.loaded = None

    def _copy(self, x: Any) -> None:
        if self.x.dtype == BF16_BITS:  # rounded once here, not by every step's forward pass
            self.network.backend.to_bf16(x, out=self.x)
        else:
            self.x[...] = x

    def body(self) -> None:
        """The device work of the steps: what the graph records."""
        net = self.network
        for i in range(self.steps):
            outputs = net.forward(self.x, training=True)
            net.loss.train_totals(outputs, self.y, self.totals[i])
            net.backward(net.loss.dinputs)
            net.reduce_gradients()  # distributed: part of the record (NCCL allows capture)
            net.optimizer.update(net.params, net.grads)

    def run(self, metrics: bool = True) -> None:
        """The steps: the first run warms up (buffers are allocated for this size), the second
        records them and later ones replay the record, where graphs run; the optimizer's host
        counters follow. The totals
        are added to either way (on the device, where it costs nothing)."""
        if self.graph.warmed_up:
            self.graph()
        else:
            try:
                self.graph()
            except MemoryError as exc:  # CuPy's OutOfMemoryError is one
                raise out_of_memory(self.network, self.rows, exc) from exc
        for _ in range(self.steps):
            self.network.optimizer.count_step()


class OneKernelSteps(PlannedSteps):
    """The planned steps of Dense -> ReLU -> Dense in one launch of the one-kernel trainer,
    leaving the layers' and the loss's buffers as the last planned step would."""

    path = "one-kernel"

    def body(self) -> None:
        net = self.network
        first, relu, second = net.layers
        loss, n, dtype = net.loss, self.rows, net.dtype
        outs = {"hidden": first.buffer("output", (n, first.n_neurons), dtype),
                "dhidden": second.buffer("dinputs", (n, second.n_inputs), dtype),
                "logits": second.buffer("output", (n, second.n_neurons), dtype),
                "probs": loss.buffer("probs", (n, second.n_neurons), dtype),
                "dlogits": loss.buffer("dinputs", (n, second.n_neurons), dtype),
                "losses": loss.losses_buffer(n, dtype)}
        opt = net.optimizer
        net.backend.train_in_one_kernel(self.x, self.y, net.params, net.grads,
                                        [opt.state[name] for name in opt.state_names],
                                        opt.schedule, self.totals, self.steps, opt.kernel_rule(),
                                        outs)
        first.inputs, first.output, relu.output = self.x, outs["hidden"], outs["hidden"]
        second.inputs, second.output, second.dinputs = outs["hidden"], outs["logits"], outs["dhidden"]
        loss.output, loss.dinputs = outs["probs"], outs["dlogits"]


def plan_bytes(network: Network, rows: int) -> int:
    """Device bytes planned steps for ``rows`` samples need: inputs, each layer's output and
    input gradient (and ReLU mask, where the backend keeps one; and bf16 copies of its GEMM
    operands under precision "bf16"), and the loss's probabilities, gradient and per-sample
    losses."""
    itemsize = network.dtype.itemsize
    widths = [layer.n_neurons for layer in network.dense_layers]
    floats = rows * (2 * sum(widths) + 2 * network.n_outputs + 1)
    x_bytes = rows * network.n_inputs * np.dtype(x_dtype(network)).itemsize
    masks = [network.backend.relu_mask_shape(rows, layer.n_neurons)
             for layer in network.dense_layers if layer.grads_from_above]
    # Precision "bf16": each Dense's GEMM operands in bfloat16 (2 bytes), its inputs and incoming
    # gradient, and a copy of all the parameters for the weights; a Dense layer first reads the
    # inputs buffer itself (x_bytes).
    halves = 0
    if network.backend.precision == "bf16":
        halves = network.params.size + sum(rows * (layer.n_inputs + layer.n_neurons)
                                           for layer in network.dense_layers)
        if x_dtype(network) == BF16_BITS:
            halves -= rows * network.n_inputs
    return x_bytes + floats * itemsize + rows * 8 + sum(r * c for r, c in filter(None, masks)) \
        + 2 * halves


def out_of_memory(network: Network, rows: int, exc: Exception) -> MemoryError:
    need = plan_bytes(network, rows)
    return MemoryError(f"not enough device memory to plan a training step for batch_size={rows}: "
                       f"the plan needs about {need / 2**20:.1f} MiB besides the parameters "
                       f"({type(exc).__name__}: {exc}); try a smaller batch_size")
