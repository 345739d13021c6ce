"""Sequential: a stack of layers trained with one loss and one optimizer on one backend.

``compile`` lays every weight and bias out in one flat parameter buffer (gradients and optimizer
state in buffers of the same shape), so one backend call updates all of them, and folds each
ReLU into the Dense layer before it. The user still writes the layers separately.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _checks
from . import io as _io
from .backends import Backend, get_backend
from .layers import Dense, Dropout, Layer, Linear, ReLU, Softmax
from .losses import Loss, MeanSquaredError, SoftmaxCrossEntropy
from .optimizers import Optimizer
from .plan import EPOCHS_PER_LAUNCH, StepPlan

DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "tf32")
#: An epoch of this many batches or more gets a progress bar that moves batch by batch.
BATCHES_FOR_A_BATCH_BAR = 50
#: Rows per forward pass in ``evaluate``/``predict`` when no batch size is given.
INFERENCE_ROWS = 8192


class History:
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

    def plot(self, path: str | os.PathLike) -> None:
        """Draw loss and accuracy per epoch (train, and validation when there is some) to a PNG."""
        from .plot import history_curves

        history_curves(self, path)


class Sequential:
    """Layers applied in order: ``Sequential([Dense(2, 64), ReLU(), Dense(64, 3)])``."""

    def __init__(self, layers: Iterable[Layer]) -> None:
        layers = list(layers) if not isinstance(layers, Layer) else [layers]
        if not layers:
            raise ValueError("layers must hold at least one layer; got an empty list")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] must be a gpunn layer (Dense, ReLU, ...); "
                                f"got {type(layer).__name__}")
        if not any(isinstance(layer, Dense) for layer in layers):
            raise ValueError("layers must include at least one Dense layer")
        self.layers = layers
        self.loss: Loss | None = None
        self.optimizer: Optimizer | None = None
        self.backend: Backend | None = None
        self.dtype: np.dtype | None = None
        self.params: Any = None  # every weight and bias, one flat array
        self.grads: Any = None  # their gradients, laid out the same way
        self.precision = "fp32"
        self._batch_buffers: dict[tuple, Any] = {}
        self._plans: dict[tuple[int, int], StepPlan] = {}
        self._totals: Any = None  # per-epoch loss sum and correct count, on the device
        self._schedule: Any = None  # the optimizer's learning-rate schedule, on the device
        self._force_plans = False  # tests: plan steps on NumPy too, to check the plan logic

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.layers))
        where = f", backend={self.backend.name!r}" if self.backend else ""
        return f"Sequential([{inner}]{where})"

    @property
    def dense_layers(self) -> list[Dense]:
        return [layer for layer in self.layers if isinstance(layer, Dense)]

    @property
    def n_inputs(self) -> int:
        return self.dense_layers[0].n_inputs

    @property
    def n_outputs(self) -> int:
        return self.dense_layers[-1].n_neurons

    # ---- compile -------------------------------------------------------------------------

    def compile(self, loss: Loss, optimizer: Optimizer, backend: str | Backend | None = None,
                dtype: str = "float32", precision: str = "fp32") -> Sequential:
        """Choose loss, optimizer, backend ("auto", "numpy", "cupy"; default GPUNN_BACKEND or
        "auto"), dtype and GEMM precision ("fp32", or "tf32" on GPUs of compute capability 8.0+);
        lay the parameters out in one flat buffer on that backend."""
        if not isinstance(loss, Loss):
            raise TypeError(f"loss must be a gpunn loss (SoftmaxCrossEntropy(), ...); "
                            f"got {type(loss).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a gpunn optimizer (SGD(), Adam(), ...); "
                            f"got {type(optimizer).__name__}")
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}; got {dtype!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; "
                             f"got {precision!r}")
        if precision == "tf32" and str(dtype) != "float32":
            raise ValueError("precision 'tf32' applies to float32 models; got dtype "
                             f"{str(dtype)!r}")
        self._check_chain(loss)
        bk = get_backend(backend)
        bk.set_precision(precision)  # refuses tf32 where it cannot run
        bk.set_precision("fp32")
        weights = self.get_params()  # whatever the layers hold now, as host arrays
        # Nothing was changed above; from here on the model is rebuilt.
        self.loss, self.optimizer, self.dtype = loss, optimizer, np.dtype(str(dtype))
        self.precision = precision
        self._fold_layers()
        self._bind(bk, weights, optimizer_state=None)
        return self

    def _check_chain(self, loss: Loss) -> None:
        """Each Dense layer must take as many inputs as the Dense before it gives."""
        previous: tuple[int, Dense] | None = None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                if previous is not None and previous[1].n_neurons != layer.n_inputs:
                    j, before = previous
                    raise ValueError(
                        f"layer sizes do not chain: layer {i} ({layer!r}) takes {layer.n_inputs} "
                        f"inputs but layer {j} ({before!r}) gives {before.n_neurons}")
                previous = (i, layer)
        last = self.layers[-1]
        if isinstance(loss, SoftmaxCrossEntropy) and isinstance(last, Softmax):
            raise ValueError("SoftmaxCrossEntropy applies the softmax itself: remove the final "
                             "Softmax layer, or use CategoricalCrossEntropy after it")
        if loss.expects_last is not None and not isinstance(last, loss.expects_last):
            raise ValueError(f"{type(loss).__name__} expects the last layer to be "
                             f"{loss.expects_last.__name__}; got {last!r}")

    def _fold_layers(self) -> None:
        """Fold each ReLU into the Dense before it; skip dinputs below the first Dense."""
        for layer in self.dense_layers:
            layer.activation, layer.need_dinputs = None, True
            layer.relu_below, layer.grads_from_above, layer.relu_mask = None, False, None
        for before, layer in zip([None] + self.layers[:-1], self.layers):
            if isinstance(layer, ReLU):
                layer.folded = isinstance(before, Dense)
                if layer.folded:
                    before.activation = "relu"
        # Dense -> ReLU -> Dense: the upper GEMM for dinputs does the lower ReLU and bias grads.
        for lower, relu, upper in zip(self.layers, self.layers[1:], self.layers[2:]):
            if isinstance(relu, ReLU) and relu.folded and isinstance(upper, Dense):
                upper.relu_below, lower.grads_from_above = lower, True
        self._first_trainable = next(i for i, layer in enumerate(self.layers) if layer.trainable)
        self.layers[self._first_trainable].need_dinputs = False

    def _bind(self, bk: Backend, weights: list[np.ndarray],
              optimizer_state: dict[str, Any] | None) -> None:
        """Allocate the flat buffers on ``bk`` and make every layer's arrays views into them."""
        sizes = [a.size for a in weights]
        total = sum(sizes)
        self.backend = bk
        self.params = bk.asarray(np.concatenate([a.ravel() for a in weights]), dtype=self.dtype)
        self.grads = bk.zeros((total,), self.dtype)
        self.optimizer.build(bk, total, self.dtype)
        if optimizer_state:
            for name, values in optimizer_state["state"].items():
                self.optimizer.state[name][...] = bk.asarray(values, dtype=self.dtype)
            self.optimizer.iterations = optimizer_state["iterations"]
            self.optimizer.current_learning_rate = optimizer_state["current_learning_rate"]
        offset = 0
        for layer in self.dense_layers:
            views = {}
            for kind, shape in (("weight", layer.weights.shape), ("bias", layer.biases.shape)):
                size = shape[0] * shape[1]
                part = slice(offset, offset + size)
                views[kind] = self.params[part].reshape(shape)
                views["d" + kind] = self.grads[part].reshape(shape)
                for name, buf in self.optimizer.state.items():
                    setattr(layer, f"{kind}_{name}", buf[part].reshape(shape))
                offset += size
            layer.weights, layer.biases = views["weight"], views["bias"]
            layer.dweights, layer.dbiases = views["dweight"], views["dbias"]
        for layer in self.layers:
            layer._set_backend(bk)
        self.loss._set_backend(bk)
        self._batch_buffers.clear()
        self._plans.clear()  # graphs hold the old buffers' addresses
        self._totals = self._schedule = None

    def _require_compiled(self, what: str) -> None:
        if self.backend is None:
            raise RuntimeError(f"call compile(loss, optimizer) before {what}")

    # ---- parameters and backends -----------------------------------------------------------

    def get_params(self) -> list[np.ndarray]:
        """NumPy copies of the parameters, in the order W1, b1, W2, b2, ..."""
        out = []
        for layer in self.dense_layers:
            out += [layer.backend.to_numpy(layer.weights), layer.backend.to_numpy(layer.biases)]
        return out

    def set_params(self, params: list[Any]) -> None:
        """Replace the parameters (W1, b1, W2, b2, ...); all are checked before any is written."""
        dense = self.dense_layers
        params = list(params)
        if len(params) != 2 * len(dense):
            raise ValueError(f"params must hold {2 * len(dense)} arrays (a weight and a bias for "
                             f"each of {len(dense)} Dense layers); got {len(params)}")
        checked = []
        for k, value in enumerate(params):
            layer_no, is_bias = k // 2, k % 2 == 1
            layer = dense[layer_no]
            want = layer.biases.shape if is_bias else layer.weights.shape
            what = f"params[{k}] ({'biases' if is_bias else 'weights'} of Dense layer {layer_no}, {layer!r})"
            arr = _checks._host(value)
            if is_bias and arr.shape == (want[1],):
                arr = arr.reshape(want)
            if arr.shape != want:
                raise ValueError(f"{what} must have shape {want}; got {arr.shape}")
            if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
                raise ValueError(f"{what} must hold finite real numbers")
            checked.append(arr)
        for layer, weights, biases in zip(dense, checked[::2], checked[1::2]):
            if self.backend is None:
                layer.weights, layer.biases = weights.astype(np.float64), biases.astype(np.float64)
            else:
                layer.weights[...] = self.backend.asarray(weights, dtype=self.dtype)
                layer.biases[...] = self.backend.asarray(biases, dtype=self.dtype)

    def save(self, path: str | os.PathLike) -> None:
        """Write parameters, optimizer state and step count, architecture and compile settings
        to one .safetensors file, atomically; ``gpunn.load(path)`` rebuilds the model."""
        _io.save(self, path)

    def to(self, backend: str | Backend) -> Sequential:
        """Move parameters and optimizer state to another backend ("numpy", "cupy", "auto")."""
        self._require_compiled("to()")
        bk = get_backend(backend)
        if bk is self.backend:
            return self
        bk.set_precision(self.precision)  # refuses tf32 on the CPU before anything moves
        weights = self.get_params()
        state = self._optimizer_state(host=True)
        self._bind(bk, weights, state)
        return self

    def _optimizer_state(self, host: bool) -> dict[str, Any]:
        opt, bk = self.optimizer, self.backend
        copy = bk.to_numpy if host else (lambda a: a.copy())
        return {"state": {k: copy(v) for k, v in opt.state.items()},
                "iterations": opt.iterations,
                "current_learning_rate": opt.current_learning_rate}

    def _snapshot(self) -> tuple[Any, dict[str, Any]]:
        return self.params.copy(), self._optimizer_state(host=False)

    def _restore(self, snapshot: tuple[Any, dict[str, Any]]) -> None:
        params, state = snapshot
        self.params[...] = params
        for name, values in state["state"].items():
            self.optimizer.state[name][...] = values
        self.optimizer.iterations = state["iterations"]
        self.optimizer.current_learning_rate = state["current_learning_rate"]
        if self._schedule is not None:
            self._sync_schedule()

    # ---- forward and backward --------------------------------------------------------------

    def _forward(self, x: Any, training: bool) -> Any:
        self.backend.set_precision(self.precision)  # the backend is shared between models
        for layer in self.layers:
            if isinstance(layer, ReLU) and layer.folded:
                layer.output = x  # the Dense before already applied it
                continue
            x = layer.forward(x, training)
        return x

    def _backward(self, dvalues: Any) -> None:
        for layer in reversed(self.layers[self._first_trainable:]):
            if isinstance(layer, ReLU) and layer.folded:
                continue
            dvalues = layer.backward(dvalues)

    def _step(self, x: Any, y: Any) -> tuple[Any, Any]:
        """One optimizer step on a batch; returns per-sample losses and the outputs."""
        outputs = self._forward(x, training=True)
        losses = self.loss.train(outputs, y)
        self._backward(self.loss.dinputs)
        self.optimizer.step(self.backend, self.params, self.grads)
        return losses, outputs

    # ---- planned steps (CuPy: captured as CUDA graphs) --------------------------------------

    def _plan_problem(self) -> str | None:
        """Why this model's steps cannot be planned, or None when they can."""
        if not isinstance(self.loss, SoftmaxCrossEntropy):
            return f"{type(self.loss).__name__} is not planned (only SoftmaxCrossEntropy)"
        for layer in self.layers:
            if not isinstance(layer, (Dense, ReLU, Linear)):
                return f"{layer!r} is not planned (Dense, ReLU and Linear are)"
        if any(layer.regularized for layer in self.dense_layers):
            return "L1/L2 penalties are not planned"
        return None

    def _uses_plans(self) -> bool:
        return (self.backend.plans_steps or self._force_plans) and self._plan_problem() is None

    def _plan(self, rows: int, steps: int) -> StepPlan:
        plan = self._plans.get((rows, steps))
        if plan is None:
            plan = self._plans[(rows, steps)] = StepPlan(self, rows, steps)
        return plan

    def _sync_schedule(self) -> None:
        """Write the host's step count into the device schedule (in place: graphs keep it)."""
        values = self.backend.asarray(np.array(self.optimizer.schedule_values()))
        if self._schedule is None:
            self._totals = self.backend.zeros((EPOCHS_PER_LAUNCH, 2), np.float64)
            self._schedule = values
        else:
            self._schedule[...] = values

    def _planned_step(self, x: Any, y: Any, totals: Any) -> None:
        """One step, everything on the device: what a plan records and replays."""
        outputs = self._forward(x, training=True)
        loss, n = self.loss, x.shape[0]
        probs = loss.output = loss._buffer("probs", outputs.shape, outputs.dtype)
        dlogits = loss.dinputs = loss._buffer("dinputs", outputs.shape, outputs.dtype)
        self.backend.softmax_cross_entropy_totals(outputs, y, probs, dlogits,
                                                  loss._losses_buffer(n, outputs.dtype), totals)
        self._backward(dlogits)
        self.optimizer.step_scheduled(self.backend, self.params, self.grads, self._schedule)

    def _small_net(self, rows: int) -> bool:
        """Whether plans for ``rows`` samples use the backend's one-kernel trainer: the book's
        Dense -> ReLU -> Dense, small enough for it (planned models: SoftmaxCrossEntropy, no
        penalties)."""
        if [type(layer) for layer in self.layers] != [Dense, ReLU, Dense]:
            return False
        first, second = self.dense_layers
        sizes = (first.n_inputs, first.n_neurons, second.n_neurons)
        return self.backend.fits_small_net(rows, sizes, self.dtype)

    def _small_net_steps(self, x: Any, y: Any, steps: int) -> None:
        """``steps`` planned steps in one launch of the one-kernel trainer, leaving the layers'
        and the loss's buffers as the last planned step would."""
        first, relu, second = self.layers
        loss, n, dtype = self.loss, x.shape[0], self.dtype
        outs = {"hidden": first._buffer("output", (n, first.n_neurons), dtype),
                "dhidden": second._buffer("dinputs", (n, second.n_inputs), dtype),
                "logits": second._buffer("output", (n, second.n_neurons), dtype),
                "probs": loss._buffer("probs", (n, second.n_neurons), dtype),
                "dlogits": loss._buffer("dinputs", (n, second.n_neurons), dtype),
                "losses": loss._losses_buffer(n, dtype)}
        opt = self.optimizer
        self.backend.train_small_net(x, y, self.params, self.grads,
                                     [opt.state[name] for name in opt.state_names], self._schedule,
                                     self._totals, steps, opt.kernel_rule(), outs)
        first.inputs, first.output, relu.output = x, outs["hidden"], outs["hidden"]
        second.inputs, second.output, second.dinputs = outs["hidden"], outs["logits"], outs["dhidden"]
        loss.output, loss.dinputs = outs["probs"], outs["dlogits"]

    def _planned_epochs(self, X: Any, y: Any, batch: int, shuffle: bool,
                        rng: np.random.Generator, count: int,
                        on_batch: Any = None) -> list[tuple[float, float]]:
        """``count`` epochs through plans; their (loss sum, correct count), read at once."""
        bk, n = self.backend, X.shape[0]
        self._totals.fill(0)
        if batch == n:  # full batch: the data is copied into the plan once per fit
            plan = self._plan(n, count)
            plan.load(X, y)
            plan.run()
        else:
            order = bk.permutation(n, rng) if shuffle else None
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                plan = self._plan(stop - start, 1)
                plan.loaded = None  # its inputs change batch by batch
                if order is None:
                    plan.x[...] = X[start:stop]
                    plan.y[...] = y[start:stop]
                else:
                    bk.take_rows(X, order[start:stop], out=plan.x)
                    bk.take_rows(y, order[start:stop], out=plan.y)
                plan.run()
                if on_batch is not None:
                    on_batch()
        totals = bk.to_numpy(self._totals[:count])  # the one wait for the device
        return [(float(loss), float(correct)) for loss, correct in totals]

    def _regularization_loss(self) -> float:
        return float(sum(layer.regularization_loss() for layer in self.dense_layers
                         if layer.regularized))

    # ---- data ----------------------------------------------------------------------------

    def _prepare(self, X: Any, y: Any, name: str = "") -> tuple[Any, Any]:
        """Check X and y against the model, and put them on the device in working dtypes."""
        X = _checks.features(X, f"{name}X", self.n_inputs)
        y = self.loss.prepare_targets(y, X.shape[0], self.n_outputs)
        bk = self.backend
        return (bk.asarray(X, dtype=self.dtype),
                bk.asarray(y, dtype=self.loss.targets_dtype(self.dtype)))

    def _batch_buffer(self, name: str, like: Any, rows: int) -> Any:
        shape = (rows,) + like.shape[1:]
        key = (name, shape)
        buf = self._batch_buffers.get(key)
        if buf is None:
            buf = self._batch_buffers[key] = self.backend.empty(shape, like.dtype)
        return buf

    # ---- training ------------------------------------------------------------------------

    def train_step(self, X: Any, y: Any) -> float:
        """Exactly one optimizer step on this batch; returns its loss (data + regularization)."""
        self._require_compiled("train_step()")
        X, y = self._prepare(X, y)
        if self._uses_plans():
            self._sync_schedule()
            [(loss_sum, _)] = self._planned_epochs(X, y, X.shape[0], False, None, 1)
            return loss_sum / X.shape[0]
        reg = self._regularization_loss()
        losses, _ = self._step(X, y)
        return float(losses.mean()) + reg

    def prepare_step(self, X: Any, y: Any) -> Any:
        """Put one batch on the device and return a function that takes one optimizer step on it
        each call (planned and replayed as a CUDA graph where the backend can): for benchmarks
        and hand-written loops. Nothing is read back; ``evaluate`` gives the loss."""
        self._require_compiled("prepare_step()")
        X, y = self._prepare(X, y)
        if not self._uses_plans():
            return lambda: self._step(X, y)
        self._sync_schedule()
        plan = self._plan(X.shape[0], 1)
        plan.load(X, y)
        return plan.run

    def fit(self, X: Any, y: Any, epochs: int = 1, batch_size: int | None = 32,
            validation_data: tuple[Any, Any] | None = None, shuffle: bool = True,
            seed: int | None = None, verbose: int = 1, checkpoint: str | os.PathLike | None = None,
            checkpoint_every: int | None = None,
            resume_from: str | os.PathLike | None = None) -> History:
        """Train until ``epochs`` passes over the data are done (``batch_size=None``: full batch).

        ``checkpoint``: a file saved every ``checkpoint_every`` epochs, at the end, and on Ctrl-C
        (as of the last finished epoch). ``resume_from``: a checkpoint to continue from, with
        the optimizer state and the shuffling and dropout generators as they were, so the run
        ends as an uninterrupted one would; ``epochs`` counts all epochs, not extra ones.
        """
        self._require_compiled("fit()")
        X, y = self._prepare(X, y)
        n = X.shape[0]
        epochs = _checks.whole_number(epochs, "epochs", 0)
        batch = n if batch_size is None else min(_checks.whole_number(batch_size, "batch_size", 1), n)
        validation = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            validation = self._prepare(*validation_data, name="validation_data ")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be True or False; got {shuffle!r}")
        if seed is not None:
            _checks.whole_number(seed, "seed", 0)
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0 (silent), 1 (progress bar) or 2 (a line per "
                             f"epoch); got {verbose!r}")
        if checkpoint_every is not None:
            _checks.whole_number(checkpoint_every, "checkpoint_every", 1)
            if checkpoint is None:
                raise ValueError("checkpoint_every needs checkpoint=<file> to save to")
        resumed = None
        if resume_from is not None:
            resumed = _io.read(resume_from)
            if "training" not in resumed[1]:
                raise ValueError(f"{resume_from} is a saved model, not a checkpoint written by "
                                 f"fit(checkpoint=...): it has no training state to resume")

        # Everything is checked; from here on the model trains.
        rng = np.random.default_rng(seed)
        dropouts = [layer for layer in self.layers if isinstance(layer, Dropout)]

        def set_generators(state: dict[str, Any]) -> None:
            """Shuffling and dropout generators back as a training state recorded them."""
            rng.bit_generator.state = state["rng"]
            for layer, saved in zip(dropouts, state["dropout_rngs"]):
                layer.rng.bit_generator.state = saved

        if seed is not None:  # dropout masks follow the seed too
            for layer in dropouts:
                layer.rng = np.random.default_rng(rng.integers(2**63))
        history = History(validation is not None)
        done = 0
        if resumed is not None:
            tensors, meta = resumed
            _io.restore(self, tensors, meta, resume_from)
            state = meta["training"]
            done = int(state["epoch"])
            set_generators(state)
            history.history.update({k: list(v) for k, v in state["history"].items()
                                    if k in history.history})
            history.epoch = list(state["history_epochs"])
        if isinstance(self.loss, MeanSquaredError):
            self.loss.precision = float(y.std()) / 250
        planned = self._uses_plans()
        if planned:
            self._sync_schedule()
        # Planned full-batch training runs several epochs per graph launch; with validation
        # data the model is evaluated after every epoch, so one at a time.
        per_run = EPOCHS_PER_LAUNCH if planned and batch == n and validation is None else 1
        if checkpoint is not None and checkpoint_every:
            per_run = min(per_run, checkpoint_every)
        # The bar counts epochs, or batches when an epoch has many of them.
        batches = -(-n // batch)
        per_batch = verbose == 1 and batches >= BATCHES_FOR_A_BATCH_BAR
        bar = None
        if verbose == 1:
            bar = _progress(epochs * batches, done * batches, "batch") if per_batch else \
                _progress(epochs, done, "epoch")
        on_batch = (lambda: bar.update(1)) if per_batch else None
        shown = 0.0

        def training_state() -> dict[str, Any]:
            """Where training stands, for a checkpoint: taken at an epoch boundary."""
            return {"epoch": done, "rng": rng.bit_generator.state,
                    "dropout_rngs": [layer.rng.bit_generator.state for layer in dropouts],
                    "history": history.history, "history_epochs": history.epoch}

        try:
            while done < epochs:
                count = min(per_run, epochs - done)
                snapshot = self._snapshot()
                boundary = training_state() if checkpoint is not None else None
                try:
                    if planned:
                        results = self._planned_epochs(X, y, batch, shuffle, rng, count, on_batch)
                    else:
                        loss_sum, correct = self._epoch(X, y, batch, shuffle, rng, on_batch)
                        results = [(float(loss_sum), float(correct))]
                except KeyboardInterrupt:
                    if checkpoint is not None:  # save as of the last finished epoch, then stop
                        self._restore(snapshot)
                        set_generators(boundary)
                        _io.save(self, checkpoint, training=boundary)
                    raise
                reg = self._regularization_loss()
                for i, (loss_sum, correct) in enumerate(results):
                    epoch = done + i + 1
                    loss = loss_sum / n + reg
                    if not math.isfinite(loss):
                        self._restore(snapshot)
                        for _ in range(i):  # back to the state before the failing epoch
                            self._planned_epochs(X, y, batch, shuffle, rng, 1)
                        raise FloatingPointError(
                            f"training diverged: the loss became {loss} at epoch {epoch}; the "
                            f"parameters are back as they were before that epoch (try a lower lr)")
                    history.history["loss"].append(loss)
                    history.history["accuracy"].append(correct / n)
                    if validation is not None:
                        val = self._evaluate(*validation, rows=INFERENCE_ROWS)
                        history.history["val_loss"].append(val["loss"])
                        history.history["val_accuracy"].append(val["accuracy"])
                    history.epoch.append(epoch)
                    if verbose == 2:
                        metrics = " ".join(f"{k} {v[-1]:.4f}" for k, v in history.history.items())
                        print(f"epoch {epoch}/{epochs} {metrics}", file=sys.stderr)
                done += count
                if checkpoint is not None and (done == epochs or (
                        checkpoint_every and done % checkpoint_every == 0)):
                    _io.save(self, checkpoint, training=training_state())
                if bar is not None:
                    if not per_batch:
                        bar.update(count)
                    now = time.monotonic()
                    if now - shown > 0.2 or done == epochs:  # formatting costs; not every epoch
                        shown = now
                        metrics = {k: f"{v[-1]:.4f}" for k, v in history.history.items()}
                        if per_batch:
                            metrics = {"epoch": str(done), **metrics}
                        bar.set_postfix(metrics, refresh=False)
        finally:
            if bar is not None:
                bar.close()
            if isinstance(self.loss, MeanSquaredError):
                self.loss.precision = None
        return history

    def _epoch(self, X: Any, y: Any, batch: int, shuffle: bool,
               rng: np.random.Generator, on_batch: Any = None) -> tuple[Any, Any]:
        """One pass over the data; returns the summed sample losses and correct count, both left
        on the device so the host waits once per epoch, not once per batch."""
        n = X.shape[0]
        if batch == n:  # full batch: shuffling would not change the gradient
            losses, outputs = self._step(X, y)
            return losses.sum(dtype=np.float64), self.loss.count_correct(outputs, y)
        bk = self.backend
        order = bk.permutation(n, rng) if shuffle else None
        loss_sum = correct = 0
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            if order is None:
                xb, yb = X[start:stop], y[start:stop]
            else:
                rows = order[start:stop]
                xb = bk.take_rows(X, rows, out=self._batch_buffer("X", X, stop - start))
                yb = bk.take_rows(y, rows, out=self._batch_buffer("y", y, stop - start))
            losses, outputs = self._step(xb, yb)
            loss_sum = loss_sum + losses.sum(dtype=np.float64)
            correct = correct + self.loss.count_correct(outputs, yb)
            if on_batch is not None:
                on_batch()
        return loss_sum, correct

    # ---- inference -----------------------------------------------------------------------

    def evaluate(self, X: Any, y: Any, batch_size: int | None = None) -> dict[str, float]:
        """Mean data loss and accuracy on (X, y), without dropout: {"loss", "accuracy"}."""
        self._require_compiled("evaluate()")
        X, y = self._prepare(X, y)
        rows = INFERENCE_ROWS if batch_size is None else _checks.whole_number(batch_size, "batch_size", 1)
        return self._evaluate(X, y, rows)

    def _evaluate(self, X: Any, y: Any, rows: int) -> dict[str, float]:
        loss_sum = correct = 0
        for start in range(0, X.shape[0], rows):
            xb, yb = X[start:start + rows], y[start:start + rows]
            outputs = self._forward(xb, training=False)
            loss_sum = loss_sum + self.loss.sample_losses(outputs, yb).sum(dtype=np.float64)
            correct = correct + self.loss.count_correct(outputs, yb)
        n = X.shape[0]
        return {"loss": float(loss_sum) / n, "accuracy": float(correct) / n}

    def predict(self, X: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's outputs for X as a NumPy array (class probabilities with
        SoftmaxCrossEntropy)."""
        self._require_compiled("predict()")
        X = self.backend.asarray(_checks.features(X, "X", self.n_inputs), dtype=self.dtype)
        rows = INFERENCE_ROWS if batch_size is None else _checks.whole_number(batch_size, "batch_size", 1)
        parts = []
        for start in range(0, X.shape[0], rows):
            outputs = self._forward(X[start:start + rows], training=False)
            parts.append(self.backend.to_numpy(self.loss.predictions(outputs)))
        return np.concatenate(parts)


def _progress(total: int, done: int, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit=unit, leave=True, dynamic_ncols=True)
