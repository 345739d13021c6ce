"""Saving and reading networks: one ``.safetensors`` file holding a network's state dict (the
flat parameter array and the optimizer's state arrays), with the architecture, compile settings
and step count as JSON in its metadata; a checkpoint adds where training stood (its metric
history as tensors, so the header stays small however long the run).

Writes are atomic (files.write_atomic): a crash mid-save leaves the previous file as it was.
Reads check everything a file declares (the architecture against the stored tensors' sizes,
dtypes, finiteness, every key) before anything is built, and never run code from a file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import layers as _layers
from . import losses as _losses
from . import optimizers as _optimizers
from .backends.base import PRECISIONS
from .files import write_atomic
from .network import Network

FORMAT = "gpunn.model"
#: The format of ``save_parameters``: weights and biases alone, as the book's save_parameters.
PARAMETERS = "gpunn.parameters"
VERSION = 1
LAYERS = {cls.__name__: cls for cls in (_layers.Dense, _layers.ReLU, _layers.Softmax,
                                        _layers.Sigmoid, _layers.Linear, _layers.Dropout)}
LOSSES = {cls.__name__: cls for cls in (_losses.SoftmaxCrossEntropy, _losses.CategoricalCrossEntropy,
                                        _losses.BinaryCrossEntropy, _losses.MeanSquaredError,
                                        _losses.MeanAbsoluteError)}
OPTIMIZERS = {cls.__name__: cls for cls in (_optimizers.SGD, _optimizers.Adagrad,
                                            _optimizers.RMSprop, _optimizers.Adam)}
DTYPES = ("float32", "float64")
METRICS = ("accuracy",)


def layer_config(layer: _layers.Layer) -> dict[str, Any]:
    """What it takes to build the layer again (not its weights)."""
    if isinstance(layer, _layers.Dense):
        return {"n_inputs": layer.n_inputs, "n_neurons": layer.n_neurons, "init": layer.init,
                "weight_regularizer_l1": layer.weight_regularizer_l1,
                "weight_regularizer_l2": layer.weight_regularizer_l2,
                "bias_regularizer_l1": layer.bias_regularizer_l1,
                "bias_regularizer_l2": layer.bias_regularizer_l2}
    if isinstance(layer, _layers.Dropout):
        return {"rate": layer.rate}
    return {}


def kind(obj: Any, known: dict[str, type]) -> str:
    """The name a file records for ``obj``: its class, or the gpunn class it derives from (the
    book's Layer_Dense is saved as Dense)."""
    return next(cls.__name__ for cls in type(obj).__mro__ if known.get(cls.__name__) is cls)


def architecture(layers: list[_layers.Layer]) -> list[dict[str, Any]]:
    return [{"type": kind(layer, LAYERS), "config": layer_config(layer)} for layer in layers]


# ---- writing ---------------------------------------------------------------------------------

def save(network: Network, path: str | os.PathLike, training: dict[str, Any] | None = None) -> None:
    """Write the network (and, for a checkpoint, ``training``: where fit stood) to ``path``."""
    from safetensors.numpy import save as to_bytes

    state = network.state_dict(host=True)
    opt, opt_state = network.optimizer, state["optimizer"]
    tensors = {"params": state["params"]}
    for name, values in opt_state["state"].items():
        tensors[f"optimizer.{name}"] = values
    meta = {
        "format": FORMAT, "version": VERSION,
        "layers": architecture(network.layers),
        "loss": kind(network.loss, LOSSES),
        "optimizer": {"type": kind(opt, OPTIMIZERS), "config": opt.config(),
                      "iterations": opt_state["iterations"],
                      "current_learning_rate": opt_state["current_learning_rate"]},
        "dtype": str(network.dtype), "precision": network.backend.precision,
        "metrics": list(network.metrics),
    }
    if training is not None:
        training = dict(training)
        history, epochs = training.pop("history"), training.pop("history_epochs")
        training["history_keys"] = list(history)
        for key, values in history.items():
            tensors[f"history.{key}"] = np.asarray(values, dtype=np.float64)
        tensors["history.epoch"] = np.asarray(epochs, dtype=np.int64)
        meta["training"] = training
    write_atomic(Path(path), to_bytes(tensors, metadata={"gpunn": json.dumps(meta)}))


def save_parameters(path: str | os.PathLike, params: list[np.ndarray]) -> None:
    """W1, b1, W2, b2, ... to one .safetensors file, atomically (no architecture, no optimizer)."""
    from safetensors.numpy import save as to_bytes

    tensors = {f"{i:04d}": np.ascontiguousarray(p) for i, p in enumerate(params)}
    meta = {"format": PARAMETERS, "version": VERSION, "count": len(params)}
    write_atomic(Path(path), to_bytes(tensors, metadata={"gpunn": json.dumps(meta)}))


# ---- reading -----------------------------------------------------------------------------------

def read(path: str | os.PathLike, fmt: str = FORMAT) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and metadata of a gpunn file of format ``fmt`` (a model, or PARAMETERS),
    every part checked; ValueError for anything else."""
    from safetensors import safe_open

    what = "model" if fmt == FORMAT else "parameters"
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such {what} file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a {what} file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_text = (f.metadata() or {}).get("gpunn")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # SafetensorError and friends: truncated or foreign bytes
        raise ValueError(f"{path} is not a valid gpunn {what} file (it does not read as "
                         f"safetensors: {exc})") from None
    try:
        meta = json.loads(meta_text) if meta_text else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ValueError(f"{path} is not a valid gpunn {what} file (a safetensors file without "
                         f"gpunn's metadata for {what})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} is a gpunn {what} file of version {meta.get('version')}; this "
                         f"gpunn reads version {VERSION}")
    for name, values in tensors.items():
        if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
            raise ValueError(f"{path} is not a valid gpunn {what} file ({name} holds {values.dtype})")
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            raise ValueError(f"{path} holds non-finite values in {name}: a diverged model, or a "
                             f"damaged file")
    if fmt == FORMAT:
        check_model_meta(tensors, meta, path)
    return tensors, meta


def _invalid(path: Any, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid gpunn model file ({why})")


def _whole(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _one_of(value: Any, known: Any) -> bool:
    """``value`` is one of the names in ``known`` (JSON may hold anything, lists included)."""
    return isinstance(value, str) and value in known


def declared_params(layers: list[Any], path: Any) -> int:
    """How many parameters the declared layers hold, checked to be well formed."""
    if not isinstance(layers, list) or not layers:
        raise _invalid(path, "no layers")
    total = 0
    for i, spec in enumerate(layers):
        if not isinstance(spec, dict) or not _one_of(spec.get("type"), LAYERS) \
                or not isinstance(spec.get("config"), dict):
            raise _invalid(path, f"layer {i} is not a gpunn layer: {spec!r:.200}")
        if spec["type"] == "Dense":
            n_in, n_out = spec["config"].get("n_inputs"), spec["config"].get("n_neurons")
            if not _whole(n_in, 1) or not _whole(n_out, 1):
                raise _invalid(path, f"layer {i}'s sizes are not whole numbers >= 1")
            total += n_in * n_out + n_out
    return total


def check_model_meta(tensors: dict[str, np.ndarray], meta: dict[str, Any], path: Any) -> None:
    """Everything a model file declares, against what it stores, before anything is built."""
    params = tensors.get("params")
    if params is None or params.ndim != 1:
        raise _invalid(path, "no one-dimensional params tensor")
    need = declared_params(meta.get("layers"), path)
    if need != params.size:
        raise _invalid(path, f"its layers need {need} parameters; it stores {params.size}")
    if not _one_of(meta.get("loss"), LOSSES):
        raise _invalid(path, f"unknown loss {meta.get('loss')!r:.100}")
    opt = meta.get("optimizer")
    if not isinstance(opt, dict) or not _one_of(opt.get("type"), OPTIMIZERS) \
            or not isinstance(opt.get("config"), dict) or not _whole(opt.get("iterations")) \
            or not isinstance(opt.get("current_learning_rate"), (int, float)):
        raise _invalid(path, "its optimizer is not described as gpunn writes it")
    if not _one_of(meta.get("dtype", "float32"), DTYPES) \
            or not _one_of(meta.get("precision", "fp32"), PRECISIONS):
        raise _invalid(path, f"dtype {meta.get('dtype')!r:.50} / precision "
                             f"{meta.get('precision')!r:.50}")
    metrics = meta.get("metrics", [])
    if not isinstance(metrics, list) or any(not _one_of(m, METRICS) for m in metrics):
        raise _invalid(path, f"metrics {metrics!r:.100}")
    for name in sorted(tensors, key=lambda name: name != "params"):  # params first
        values = tensors[name]
        if name.startswith("optimizer.") and values.shape != params.shape:
            raise _invalid(path, f"{name} has shape {values.shape}; params has {params.shape}")
        if name == "params" or name.startswith("optimizer."):
            if values.dtype != np.dtype(meta.get("dtype", "float32")):
                raise _invalid(path, f"{name} is {values.dtype} but the file says "
                                     f"{meta.get('dtype', 'float32')}")


def build(meta: dict[str, Any], path: Any = "") -> tuple[list[_layers.Layer], Any, Any]:
    """Layers, loss and optimizer as the (checked) metadata describes them."""
    try:
        layers = [LAYERS[spec["type"]](**spec["config"]) for spec in meta["layers"]]
        loss = LOSSES[meta["loss"]]()
        opt_spec = meta["optimizer"]
        optimizer = OPTIMIZERS[opt_spec["type"]](**opt_spec["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _invalid(path, f"its architecture does not describe gpunn layers: {exc}") from None
    return layers, loss, optimizer


def state_for(network: Network, tensors: dict[str, np.ndarray], meta: dict[str, Any],
              path: Any = "") -> dict[str, Any]:
    """The file's state dict, checked against ``network``: the same layers, loss and optimizer
    rule (with the same state buffers); what ``network.load_state_dict`` takes. The network's own
    hyper-parameters (learning rate, decay, ...) stay: the file brings the state. Nothing is
    written."""
    saved, mine = meta["layers"], architecture(network.layers)
    if len(saved) != len(mine):
        raise ValueError(f"{path} holds a model of {len(saved)} layers; this one has {len(mine)}")
    for i, (a, b) in enumerate(zip(saved, mine)):
        if a["type"] != b["type"] or a["config"] != b["config"]:
            raise ValueError(f"{path} does not match this model at layer {i}: the file has "
                             f"{a['type']}({a['config']}), the model {b['type']}({b['config']})")
    if meta["loss"] != kind(network.loss, LOSSES):
        raise ValueError(f"{path} was saved with the loss {meta['loss']}; this model uses "
                         f"{kind(network.loss, LOSSES)}")
    opt_spec, opt = meta["optimizer"], network.optimizer
    if opt_spec["type"] != kind(opt, OPTIMIZERS):
        raise ValueError(f"{path} was saved with {opt_spec['type']}; this model uses "
                         f"{kind(opt, OPTIMIZERS)}")
    buffers = {key[len("optimizer."):]: values for key, values in tensors.items()
               if key.startswith("optimizer.")}
    if set(buffers) != set(opt.state_names):
        raise ValueError(f"{path}'s {opt_spec['type']} keeps the state {sorted(buffers)}; this "
                         f"model's keeps {sorted(opt.state_names)} ({opt_spec['config']} there, "
                         f"{opt.config()} here)")
    state = {"params": tensors["params"],
             "optimizer": {"state": buffers, "iterations": int(opt_spec["iterations"]),
                           "current_learning_rate": float(opt_spec["current_learning_rate"])}}
    network.check_state_dict(state, str(path))
    return state


def read_parameters(path: str | os.PathLike) -> list[np.ndarray]:
    """What ``save_parameters`` wrote, in order."""
    tensors, meta = read(path, PARAMETERS)
    if sorted(tensors) != [f"{i:04d}" for i in range(meta.get("count", -1))]:
        raise ValueError(f"{path} is not a valid gpunn parameters file (its arrays are not "
                         f"W1, b1, W2, b2, ...)")
    return [tensors[key] for key in sorted(tensors)]


# ---- checkpoints -------------------------------------------------------------------------------

def read_checkpoint(network: Network, path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint written by ``fit(checkpoint=...)``: its network state dict, checked against
    ``network``, and where training stood (epoch, generators, history), every part checked
    before anything is used."""
    tensors, meta = read(path)
    training = meta.get("training")
    if training is None:
        raise ValueError(f"{path} is a saved model, not a checkpoint written by "
                         f"fit(checkpoint=...): it has no training state to resume")
    if not isinstance(training, dict) or not _whole(training.get("epoch")):
        raise ValueError(f"{path} is not a valid gpunn checkpoint (no whole epoch count)")
    history, epochs = _history(training, tensors, training["epoch"], path)
    dropouts = [layer for layer in network.layers if isinstance(layer, _layers.Dropout)]
    states = training.get("dropout_rngs")
    if not isinstance(states, list) or len(states) != len(dropouts):
        raise ValueError(f"{path} is not a valid gpunn checkpoint (it has {_count(states)} dropout "
                         f"generator states; the model has {len(dropouts)} Dropout layers)")
    for state in [training.get("rng"), *states]:
        try:
            np.random.default_rng().bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as exc:
            raise ValueError(f"{path} is not a valid gpunn checkpoint (a generator state does "
                             f"not read: {exc})") from None
    restored = {"epoch": training["epoch"], "rng": training["rng"], "dropout_rngs": states,
                "history": history, "history_epochs": epochs, "run": _recorded_run(training, path)}
    return state_for(network, tensors, meta, path), restored


def _recorded_run(training: dict[str, Any], path: Any) -> dict[str, Any] | None:
    """The run a checkpoint was written by (rows, batch size, shuffled or not), or None in a file
    written before checkpoints recorded it."""
    run = training.get("run")
    if run is None:
        return None
    if not isinstance(run, dict) or set(run) != {"rows", "batch_size", "shuffle"} \
            or not _whole(run["rows"], 1) or not _whole(run["batch_size"], 1) \
            or not isinstance(run["shuffle"], bool):
        raise ValueError(f"{path} is not a valid gpunn checkpoint (the run it records is malformed)")
    return run


def _count(value: Any) -> Any:
    return len(value) if isinstance(value, list) else "no"


def _history(training: dict[str, Any], tensors: dict[str, np.ndarray], epoch: int,
             path: Any) -> tuple[dict[str, list[float]], list[int]]:
    """The metric history a checkpoint holds (tensors; the header in older files): one value
    per recorded epoch, those epochs rising, none past ``epoch``."""
    if "history" in training:  # written before histories became tensors
        history, epochs = training["history"], training.get("history_epochs")
    else:
        keys = training.get("history_keys")
        if not isinstance(keys, list) or any(f"history.{k}" not in tensors for k in keys) \
                or "history.epoch" not in tensors:
            raise ValueError(f"{path} is not a valid gpunn checkpoint (its history is incomplete)")
        history = {k: tensors[f"history.{k}"].tolist() for k in keys}
        epochs = tensors["history.epoch"].tolist()
    if not isinstance(history, dict) or not isinstance(epochs, list) \
            or any(not _whole(e, 1) or e > epoch for e in epochs) \
            or any(a >= b for a, b in zip(epochs, epochs[1:])) \
            or any(not isinstance(v, list) or len(v) != len(epochs) for v in history.values()) \
            or any(not isinstance(v, (int, float)) or not math.isfinite(v)
                   for values in history.values() for v in values):
        raise ValueError(f"{path} is not a valid gpunn checkpoint (its history is malformed)")
    return history, epochs
