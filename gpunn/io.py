"""Saving and loading models: one ``.safetensors`` file holding the flat parameter array and the
optimizer's state arrays, with the architecture, compile settings and step count as JSON in its
metadata (and, for checkpoints, where training stood). Writes are atomic: a temporary file in the
same folder is written, flushed and fsynced, then renamed over the real name, so a crash mid-save
leaves the previous file as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import layers as _layers
from . import losses as _losses
from . import optimizers as _optimizers

if TYPE_CHECKING:
    from .model import Sequential

FORMAT = "gpunn.model"
VERSION = 1
LAYERS = {cls.__name__: cls for cls in (_layers.Dense, _layers.ReLU, _layers.Softmax,
                                        _layers.Sigmoid, _layers.Linear, _layers.Dropout)}
LOSSES = {cls.__name__: cls for cls in (_losses.SoftmaxCrossEntropy, _losses.CategoricalCrossEntropy,
                                        _losses.BinaryCrossEntropy, _losses.MeanSquaredError)}
OPTIMIZERS = {cls.__name__: cls for cls in (_optimizers.SGD, _optimizers.Adagrad,
                                            _optimizers.RMSprop, _optimizers.Adam)}


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


def architecture(model: Sequential) -> list[dict[str, Any]]:
    return [{"type": type(layer).__name__, "config": layer_config(layer)} for layer in model.layers]


def save(model: Sequential, path: str | os.PathLike, training: dict[str, Any] | None = None) -> None:
    """Write the model (and, for a checkpoint, ``training``: where fit stood) to ``path``."""
    from safetensors.numpy import save as to_bytes

    if model.backend is None:
        raise RuntimeError("call compile(loss, optimizer) before save(): the file records the "
                           "loss and optimizer too")
    bk, opt = model.backend, model.optimizer
    tensors = {"params": bk.to_numpy(model.params)}
    for name, values in opt.state.items():
        tensors[f"optimizer.{name}"] = bk.to_numpy(values)
    meta = {
        "format": FORMAT, "version": VERSION,
        "layers": architecture(model),
        "loss": type(model.loss).__name__,
        "optimizer": {"type": type(opt).__name__, "config": opt.config(),
                      "iterations": opt.iterations,
                      "current_learning_rate": opt.current_learning_rate},
        "dtype": str(model.dtype), "precision": model.precision,
    }
    if training is not None:
        meta["training"] = training
    data = to_bytes(tensors, metadata={"gpunn": json.dumps(meta)})
    write_atomic(Path(path), data)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and metadata of a gpunn file, checked; ValueError for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a model file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_text = (f.metadata() or {}).get("gpunn")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # SafetensorError and friends: truncated or foreign bytes
        raise ValueError(f"{path} is not a valid gpunn model file (it does not read as "
                         f"safetensors: {exc})") from None
    try:
        meta = json.loads(meta_text) if meta_text else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a valid gpunn model file (a safetensors file without "
                         f"gpunn's metadata)")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} is a gpunn model file of version {meta.get('version')}; this "
                         f"gpunn reads version {VERSION}")
    if "params" not in tensors:
        raise ValueError(f"{path} is not a valid gpunn model file (no params tensor)")
    return tensors, meta


def build(meta: dict[str, Any], path: Any = "") -> tuple[list[_layers.Layer], Any, Any]:
    """Layers, loss and optimizer as the metadata describes them."""
    try:
        layers = [LAYERS[spec["type"]](**spec["config"]) for spec in meta["layers"]]
        loss = LOSSES[meta["loss"]]()
        opt_spec = meta["optimizer"]
        optimizer = OPTIMIZERS[opt_spec["type"]](**opt_spec["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid gpunn model file (its architecture does not "
                         f"describe gpunn layers: {exc!r})") from None
    return layers, loss, optimizer


def restore(model: Sequential, tensors: dict[str, np.ndarray], meta: dict[str, Any],
            path: Any = "") -> None:
    """Put the file's parameters and optimizer state into a compiled model of the same shape."""
    saved = meta["layers"]
    mine = architecture(model)
    if len(saved) != len(mine):
        raise ValueError(f"{path} holds a model of {len(saved)} layers; this one has {len(mine)}")
    for i, (a, b) in enumerate(zip(saved, mine)):
        if a["type"] != b["type"] or a["config"] != b["config"]:
            raise ValueError(f"{path} does not match this model at layer {i}: the file has "
                             f"{a['type']}({a['config']}), the model {b['type']}({b['config']})")
    flat = tensors["params"]
    if flat.shape != tuple(model.params.shape):
        raise ValueError(f"{path}: params has {flat.size} values; the model needs {model.params.size}")
    opt_spec = meta["optimizer"]
    if opt_spec["type"] != type(model.optimizer).__name__:
        raise ValueError(f"{path} was saved with {opt_spec['type']}; this model uses "
                         f"{type(model.optimizer).__name__}")
    state = {name: tensors.get(f"optimizer.{name}") for name in model.optimizer.state}
    missing = [name for name, values in state.items() if values is None or values.shape != flat.shape]
    if missing:
        raise ValueError(f"{path} lacks the optimizer state {missing}")
    bk = model.backend
    model.params[...] = bk.asarray(flat, dtype=model.dtype)
    for name, values in state.items():
        model.optimizer.state[name][...] = bk.asarray(values, dtype=model.dtype)
    model.optimizer.iterations = int(opt_spec["iterations"])
    model.optimizer.current_learning_rate = float(opt_spec["current_learning_rate"])
    if model._schedule is not None:  # recorded graphs stay valid: only the step count moved
        model._sync_schedule()


def load(path: str | os.PathLike, backend: Any = None) -> Sequential:
    """A compiled model rebuilt from ``path`` on ``backend`` (default: GPUNN_BACKEND or auto)."""
    from .backends import get_backend
    from .model import Sequential

    tensors, meta = read(path)
    layers, loss, optimizer = build(meta, path)
    bk = get_backend(backend)
    # A model trained with TF32 GEMMs loads on the CPU too; it then computes in fp32.
    precision = meta.get("precision", "fp32") if bk.name == "cupy" else "fp32"
    model = Sequential(layers)
    model.compile(loss, optimizer, backend=bk, dtype=meta.get("dtype", "float32"), precision=precision)
    restore(model, tensors, meta, path)
    return model
