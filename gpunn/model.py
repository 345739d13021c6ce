"""Sequential: a stack of layers trained with one loss and one optimizer on one backend.

The face a user sees: ``compile``, ``fit``, ``evaluate``, ``predict``, ``train_step``,
``prepare_step``, ``save``, ``to``. Each checks its arguments, then hands the work to the parts
below: the network (network.py: layers, loss, the flat parameter buffer, forward and backward),
the steps it trains with (training/steps.py) and the fit loop (training/loop.py).
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from . import checks, distributed, files, io
from .backends import Backend, get_backend
from .io import METRICS, PRECISIONS
from .layers import Dense, Dropout, Layer
from .losses import Loss
from .network import INFERENCE_ROWS, LayerStack, Network, check_chain, check_params
from .optimizers import Optimizer
from .training import ranks
from .training.callbacks import Callback, Checkpoint, EpochLines, History, ProgressBar
from .training.data import Resident, Streamed, data_for
from .training.loop import Loop
from .training.steps import Steps

DTYPES = ("float32", "float64")


class Sequential(LayerStack):
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
        first: dict[int, int] = {}
        for i, layer in enumerate(layers):
            j = first.setdefault(id(layer), i)
            if j != i:
                raise ValueError(f"layers[{i}] is the same {layer!r} object as layers[{j}]; each "
                                 f"place needs a layer of its own (its weights and gradients)")
        self.layers = layers
        #: The compiled network (None before ``compile``) and the steps it trains with.
        self.network: Network | None = None
        self.steps: Steps | None = None

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.layers))
        where = f", backend={self.backend.name!r}" if self.backend else ""
        return f"Sequential([{inner}]{where})"

    def __getstate__(self) -> dict[str, Any]:
        """For pickle and copy.deepcopy: the layers, and once compiled, what compile was given
        and the network's state dict (host copies); the steps and their graphs are remade."""
        state: dict[str, Any] = {"layers": self.layers, "compiled": None}
        net = self.network
        if net is not None:
            state["compiled"] = {"loss": net.loss, "optimizer": net.optimizer,
                                 "dtype": str(net.dtype), "backend": net.backend.name,
                                 "options": net.backend.options_set(),
                                 "metrics": net.metrics,
                                 "weights": net.get_params(), "state": net.state_dict(host=True)}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from .backends import available

        self.layers, self.network, self.steps = state["layers"], None, None
        compiled = state["compiled"]
        if compiled is None:
            return
        options = dict(compiled["options"])
        name = compiled["backend"] if compiled["backend"] in available() else "numpy"
        if name == "numpy":  # a model trained with TF32 or bf16 GEMMs computes in fp32 on the CPU
            options["precision"] = "fp32"
        bk = get_backend(name).configured(**options)
        self._build(compiled["loss"], compiled["optimizer"], bk, np.dtype(compiled["dtype"]),
                    compiled["weights"], tuple(compiled.get("metrics", _metrics(None, compiled["loss"]))))
        self.network.load_state_dict(compiled["state"])

    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print the layers (output shapes, parameter counts), the total, and once compiled the
        backend, dtype, precision, loss, optimizer and metrics."""
        rows = self.summary_rows()
        head = ("#", "layer", "output shape", "parameters")
        table = [head] + [(str(i), name, shape, f"{count:,}") for i, (name, shape, count)
                          in enumerate(rows)]
        widths = [max(len(row[j]) for row in table) for j in range(4)]
        lines = ["  ".join(cell.ljust(w) if j < 3 else cell.rjust(w)
                           for j, (cell, w) in enumerate(zip(row, widths))) for row in table]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"parameters: {sum(r[2] for r in rows):,}, all trainable")
        net = self.network
        if net is None:
            lines.append("not compiled")
        else:
            lines.append(f"backend {net.backend.name}, {net.dtype}, GEMMs in {net.backend.precision}; "
                         f"loss {type(net.loss).__name__}; optimizer {net.optimizer!r}; "
                         f"metrics {', '.join(net.metrics) or 'none'}")
        print_fn("\n".join(lines))

    # ---- what the network holds, once compiled ---------------------------------------------

    @property
    def loss(self) -> Loss | None:
        return self.network.loss if self.network else None

    @property
    def optimizer(self) -> Optimizer | None:
        return self.network.optimizer if self.network else None

    @property
    def backend(self) -> Backend | None:
        """This model's backend, with its own options (``precision``, ``epilogue_policy``,
        ``one_kernel_trainer``); the device behind it is shared."""
        return self.network.backend if self.network else None

    @property
    def dtype(self) -> np.dtype | None:
        return self.network.dtype if self.network else None

    @property
    def precision(self) -> str:
        return self.network.backend.precision if self.network else "fp32"

    @property
    def params(self) -> Any:
        """Every weight and bias, one flat array on the backend (None before compile)."""
        return self.network.params if self.network else None

    @params.setter
    def params(self, values: Any) -> None:  # ``model.params += 1`` writes in place
        if values is not self.params:
            self.network.params[...] = values

    @property
    def grads(self) -> Any:
        """Their gradients, laid out the same way."""
        return self.network.grads if self.network else None

    # ---- compile, parameters, backends -----------------------------------------------------

    def compile(self, loss: Loss, optimizer: Optimizer, backend: str | Backend | None = None,
                dtype: str = "float32", precision: str = "fp32",
                metrics: Sequence[str] | None = None) -> Sequential:
        """Choose loss, optimizer, backend ("auto", "numpy", "cupy"; default GPUNN_BACKEND or
        "auto"), dtype and GEMM precision ("fp32"; or, for float32 models on GPUs of compute
        capability 8.0+, "tf32" or "bf16": GEMMs on bfloat16 copies of their operands, float32
        for everything else);
        lay the parameters out in one flat buffer on that backend. ``metrics``: what fit,
        evaluate and the progress bar report besides the loss: ``["accuracy"]`` or ``[]``
        (default: accuracy for the classification losses, nothing for the regression ones; their
        accuracy is the book's, predictions within std(y) / 250 of the target)."""
        if not isinstance(loss, Loss):
            raise TypeError(f"loss must be a gpunn loss (SoftmaxCrossEntropy(), ...); "
                            f"got {type(loss).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a gpunn optimizer (SGD(), Adam(), ...); "
                            f"got {type(optimizer).__name__}")
        dtype = _dtype_name(dtype)
        metrics = _metrics(metrics, loss)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; "
                             f"got {precision!r}")
        if precision != "fp32" and dtype != "float32":
            raise ValueError(f"precision {precision!r} applies to float32 models; got dtype {dtype!r}")
        check_chain(self.layers, loss)
        self._check_not_shared(loss, optimizer)
        bk = get_backend(backend).configured(precision=precision)  # refuses tf32/bf16 where they cannot run
        # Nothing was changed above; from here on the model is rebuilt.
        self._build(loss, optimizer, bk, np.dtype(dtype), self.get_params(), metrics)
        return self

    def _check_not_shared(self, loss: Loss, optimizer: Optimizer) -> None:
        """A layer, loss or optimizer holds one model's state: refuse one another model has."""
        named = [(f"layers[{i}]", layer) for i, layer in enumerate(self.layers)]
        for what, part in [*named, ("loss", loss), ("optimizer", optimizer)]:
            owner = getattr(part, "owner", None)
            if owner is not None and owner() not in (None, self):
                raise ValueError(f"{what} ({part!r}) is already part of another compiled model; "
                                 f"give each model its own")

    def _build(self, loss: Loss, optimizer: Optimizer, bk: Backend, dtype: np.dtype,
               weights: list[np.ndarray], metrics: tuple[str, ...]) -> None:
        self.network = Network(self.layers, loss, optimizer, bk, dtype, weights)
        self.network.metrics = metrics
        self.steps = Steps(self.network)  # recorded graphs hold the old buffers' addresses
        for part in [*self.layers, loss, optimizer]:
            part.owner = weakref.ref(self)

    def _require_compiled(self, what: str) -> Network:
        if self.network is None:
            raise RuntimeError(f"call compile(loss, optimizer) before {what}")
        return self.network

    def get_params(self) -> list[np.ndarray]:
        """NumPy copies of the parameters, in the order W1, b1, W2, b2, ..."""
        if self.network is not None:
            return self.network.get_params()
        return [layer.backend.to_numpy(p) for layer in self.dense_layers
                for p in (layer.weights, layer.biases)]

    def set_params(self, params: list[Any]) -> None:
        """Replace the parameters (W1, b1, W2, b2, ...); all are checked before any is written."""
        if self.network is not None:
            self.network.set_params(params)
            return
        checked = check_params(self.dense_layers, params)
        for layer, weights, biases in zip(self.dense_layers, checked[::2], checked[1::2]):
            bk = layer.backend
            layer.weights = bk.asarray(weights, dtype=np.float64)
            layer.biases = bk.asarray(biases, dtype=np.float64)

    def save(self, path: str | os.PathLike) -> None:
        """Write parameters, optimizer state and step count, architecture and compile settings
        to one .safetensors file, atomically; ``gpunn.load(path)`` rebuilds the model."""
        if self.network is None:
            raise RuntimeError("call compile(loss, optimizer) before save(): the file records the "
                               "loss and optimizer too")
        io.save(self.network, path)

    def to(self, backend: str | Backend) -> Sequential:
        """Move parameters and optimizer state to another backend ("numpy", "cupy", "auto")."""
        net = self._require_compiled("to()")
        target = get_backend(backend)
        if target.name == net.backend.name:
            return self
        # The options the model asked for go along (tf32 and bf16 are refused on the CPU before
        # anything moves); those left at the old backend's defaults take the new one's: the
        # one-kernel trainer is on by default on a GPU only.
        bk = target.configured(**net.backend.options_set())
        state = net.state_dict(host=True)
        self._build(net.loss, net.optimizer, bk, net.dtype, net.get_params(), net.metrics)
        self.network.load_state_dict(state)
        return self

    # ---- training ------------------------------------------------------------------------

    def train_step(self, X: Any, y: Any) -> float:
        """Exactly one optimizer step on this batch; returns its loss (data + regularization)."""
        net = self._require_compiled("train_step()")
        X, y = net.prepare(X, y)
        reg = net.regularization_loss()  # of the parameters the step starts from
        step = self._loaded_step(X, y)
        self.steps.totals.fill(0)
        step.run()
        return float(net.backend.to_numpy(self.steps.totals[0, 0])) / X.shape[0] + reg

    def prepare_step(self, X: Any, y: Any) -> Callable[[], None]:
        """Put one batch on the device and return a function that takes one optimizer step on it
        each call (planned and replayed as a CUDA graph where the backend can): for benchmarks
        and hand-written loops. Nothing is read back; ``evaluate`` gives the loss."""
        net = self._require_compiled("prepare_step()")
        step = self._loaded_step(*net.prepare(X, y))
        return functools.partial(step.run, metrics=False)

    def _loaded_step(self, X: Any, y: Any) -> Any:
        """The step for one batch of all of (X, y), loaded with it."""
        self.network.optimizer.sync_schedule()
        step = self.steps.get(X.shape[0], 1)
        step.load(X, y, 0, X.shape[0])
        return step

    def fit(self, X: Any, y: Any, epochs: int = 1, batch_size: int | None = 32,
            validation_data: tuple[Any, Any] | None = None, shuffle: bool = True,
            seed: int | None = None, verbose: int = 1, checkpoint: str | os.PathLike | None = None,
            checkpoint_every: int | None = None,
            resume_from: str | os.PathLike | None = None,
            callbacks: Sequence[Callback] = (), validation_split: float = 0.0,
            stream: bool | None = None, distributed: bool = False) -> History:
        """Train until ``epochs`` passes over the data are done (``batch_size=None``: full batch).

        ``validation_data=(X_val, y_val)``, or ``validation_split``: the fraction of (X, y) held
        out for validation (its last rows, before any shuffling, as Keras does). ``stream``:
        None keeps data whose working copy fits the backend's ``data_budget()`` on the device and
        streams larger host data (NumPy arrays, memmaps, ``np.load(..., mmap_mode="r")``) a batch
        at a time; True or False decides (streaming needs mini-batches). ``distributed``: train
        over the ranks of an MPI run (``gpunn.distributed``): ``batch_size`` stays the whole batch,
        each rank takes a part, and the run takes the steps one process would; rank 0 alone saves,
        checkpoints and prints.
        ``checkpoint``: a file saved every ``checkpoint_every`` epochs, at the end, and on Ctrl-C
        (as of the last finished epoch; Ctrl-C always puts the model back there). ``resume_from``:
        a checkpoint to continue from, with the optimizer state and the shuffling and dropout
        generators as they were, so the run ends as an uninterrupted one would (a ``UserWarning``
        says where it cannot: other rows, batch size or shuffling than the checkpoint's run, or a
        checkpoint past ``epochs``, which trains nothing); ``epochs`` counts all epochs, not
        extra ones. ``callbacks``: ``gpunn.callbacks`` objects (EarlyStopping,
        ModelCheckpoint, LambdaCallback, your own Callback), told of each epoch (with its
        metrics, data_loss and reg_loss) and each batch.
        """
        net = self._require_compiled("fit()")
        data, validation = _fit_data(net, X, y, validation_data, validation_split, stream)
        epochs = checks.whole_number(epochs, "epochs", 0)
        batch = data.n if batch_size is None else checks.whole_number(batch_size, "batch_size", 1)
        if data.streamed and batch >= data.n:
            raise ValueError("full-batch training needs all of X on the device at once, and this X "
                             "is streamed from host memory: give a batch_size, or stream=False")
        _check_fit_options(shuffle, seed, verbose, checkpoint, checkpoint_every)
        if checkpoint is not None:  # before any work, not when the first save comes
            files.check_writable(checkpoint, "checkpoint")
        history = History(validation is not None, accuracy="accuracy" in net.metrics)
        callbacks = _checked_callbacks(callbacks, list(history.history))
        group = None
        if distributed:
            group, seed, resumed = _join_ranks(net, data, validation, batch, epochs, seed,
                                               shuffle, resume_from)
        else:
            resumed = io.read_checkpoint(net, resume_from) if resume_from is not None else None

        # Everything is checked; from here on the model trains.
        rng = np.random.default_rng(seed)
        if seed is not None:  # dropout masks follow the seed too
            for layer in self.layers:
                if isinstance(layer, Dropout):
                    layer.rng = np.random.default_rng(rng.integers(2**63))
        if group is not None:
            ranks.share_state(group, net)
        net.optimizer.sync_schedule()
        loop = Loop(net, self.steps, data, epochs, min(batch, data.n), bool(shuffle), rng,
                    history, validation=validation)
        talks = group is None or group.rank == 0  # the files, the output and warnings: rank 0's
        if resumed is not None:
            loop.resume(*resumed, resume_from, warn=talks)
        loop.callbacks += callbacks
        if talks:
            loop.callbacks += _reporters(loop, checkpoint, checkpoint_every, verbose)
        net.group = group
        try:
            return loop.run()
        finally:
            net.group = None

    # ---- inference -----------------------------------------------------------------------

    def evaluate(self, X: Any, y: Any, batch_size: int | None = None,
                 stream: bool | None = None) -> dict[str, float]:
        """Mean data loss on (X, y), without dropout, and the compiled metrics: {"loss",
        "accuracy"} (accuracy when tracked). ``batch_size``: rows per forward pass (None: 8192),
        which bounds the memory it takes. ``stream`` as for ``fit``."""
        net = self._require_compiled("evaluate()")
        rows = _inference_rows(batch_size)
        result = net.evaluate_chunks(data_for(net, X, y, stream).chunks(rows))
        return {k: v for k, v in result.items() if k == "loss" or k in net.metrics}

    def predict(self, X: Any, batch_size: int | None = None,
                stream: bool | None = None) -> np.ndarray:
        """The model's outputs for X as a NumPy array (class probabilities with
        SoftmaxCrossEntropy). ``batch_size``: rows per forward pass (None: 8192), which bounds
        the memory it takes. ``stream`` as for ``fit``."""
        net = self._require_compiled("predict()")
        rows = _inference_rows(batch_size)
        return net.predict_chunks(x for x, _ in data_for(net, X, None, stream).chunks(rows))


def _dtype_name(dtype: Any) -> str:
    """"float32" or "float64", from a name or a NumPy type ("float32", np.float32, ...)."""
    try:
        name = np.dtype(dtype).name if dtype is not None else None
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}; got {dtype!r}")
    return name


def _metrics(metrics: Sequence[str] | None, loss: Loss) -> tuple[str, ...]:
    """The metrics to report: those given (checked), else accuracy for classification."""
    if metrics is None:
        return ("accuracy",) if loss.classification else ()
    if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)) \
            or any(m not in METRICS for m in metrics):
        raise ValueError(f"metrics must be a list of {', '.join(map(repr, METRICS))} (or empty); "
                         f"got {metrics!r}")
    return tuple(dict.fromkeys(metrics))


def _inference_rows(batch_size: int | None) -> int:
    return INFERENCE_ROWS if batch_size is None else checks.whole_number(batch_size, "batch_size", 1)


def _fit_data(net: Network, X: Any, y: Any, validation_data: Any, validation_split: Any,
              stream: bool | None) -> tuple[Resident | Streamed, Resident | Streamed | None]:
    """(X, y) checked, on the device or streamed, and the validation data: ``validation_data``
    likewise, or the last ``validation_split`` of (X, y)."""
    data = data_for(net, X, y, stream)
    split = checks.real_number(validation_split, "validation_split", 0, 1)
    if validation_data is not None:
        if split:
            raise ValueError("give validation_data or validation_split, not both")
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (X_val, y_val)")
        return data, data_for(net, *validation_data, stream, name="validation_data ")
    if not split:
        return data, None
    held = int(data.n * split)
    if held < 1 or held >= data.n:
        raise ValueError(f"validation_split={split} of {data.n} samples leaves "
                         f"{'no validation' if held < 1 else 'no training'} samples")
    return data.split(data.n - held)


def _reporters(loop: Loop, checkpoint: Any, checkpoint_every: int | None,
               verbose: int) -> list[Callback]:
    """The callbacks fit's own arguments ask for: checkpoints, a bar or lines."""
    out: list[Callback] = []
    if checkpoint is not None:
        out.append(Checkpoint(checkpoint, loop.epochs, checkpoint_every))
    if verbose == 1:
        out.append(ProgressBar(loop.epochs, loop.done, -(-loop.data.n // loop.batch_size)))
    elif verbose == 2:
        out.append(EpochLines(loop.epochs))
    return out


def _join_ranks(net: Network, data: Resident | Streamed, validation: Resident | Streamed | None,
                batch: int, epochs: int, seed: int | None, shuffle: bool,
                resume_from: Any) -> tuple[Any, int, Any]:
    """Distributed fit, before training: the ranks' Group, once they agree on what they train;
    rank 0's seed; the checkpoint rank 0 read, on every rank."""
    group = distributed.init()
    group.agree(ranks.settings(net, data.n, validation.n if validation else 0, batch, epochs,
                               seed, shuffle))
    resumed = None
    if resume_from is not None:
        resumed = ranks.read_on_rank0(group, lambda: io.read_checkpoint(net, resume_from))
    return group, ranks.seed_for(group, seed), resumed


def _checked_callbacks(callbacks: Any, metrics: list[str]) -> list[Callback]:
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}] must be a gpunn.callbacks.Callback; "
                            f"got {type(cb).__name__}")
        cb.expects(metrics)
    return callbacks


def _check_fit_options(shuffle: Any, seed: Any, verbose: Any, checkpoint: Any,
                       checkpoint_every: Any) -> None:
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"shuffle must be True or False; got {shuffle!r}")
    if seed is not None:
        checks.whole_number(seed, "seed", 0)
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0 (silent), 1 (progress bar) or 2 (a line per "
                         f"epoch); got {verbose!r}")
    if checkpoint_every is not None:
        checks.whole_number(checkpoint_every, "checkpoint_every", 1)
        if checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint=<file> to save to")


def load(path: str | os.PathLike, backend: Any = None) -> Sequential:
    """A compiled model rebuilt from ``path`` on ``backend`` (default: GPUNN_BACKEND or auto)."""
    tensors, meta = io.read(path)
    layers, loss, optimizer = io.build(meta, path)
    bk = get_backend(backend)
    # A model trained with TF32 GEMMs loads on the CPU too; it then computes in fp32.
    precision = meta.get("precision", "fp32") if bk.name == "cupy" else "fp32"
    model = Sequential(layers)
    model.compile(loss, optimizer, backend=bk, dtype=meta.get("dtype", "float32"), precision=precision,
                  metrics=meta.get("metrics"))
    model.network.load_state_dict(io.state_for(model.network, tensors, meta, path))
    return model
