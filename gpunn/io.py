"""Saving and reading networks: one ``.safetensors`` file holding a network's state dict (the
flat parameter array and the optimizer's state arrays), with the architecture, compile settings
and step count as JSON in its metadata (and, for checkpoints, where training stood). Writes are
atomic: a temporary file in the same folder is written, flushed and fsynced, then renamed over the
real name, so a crash mid-save leaves the previous file as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import layers as _layers
from . import losses as _losses
from . import optimizers as _optimizers
from .network import Network

FORMAT = "gpunn.model"
VERSION = 1
LAYERS = {cls.__name__: cls for cls in (_layers.Dense, _layers.ReLU, _layers.Softmax,
                                        _layers.Sigmoid, _layers.Linear, _layers.Dropout)}
LOSSES = {cls.__name__: cls for cls in (_losses.SoftmaxCrossEntropy, _losses.CategoricalCrossEntropy,
                                        _losses.BinaryCrossEntropy, _losses.MeanSquaredError,
                                        _losses.MeanAbsoluteError)}
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


def kind(obj: Any, known: dict[str, type]) -> str:
    """The name a file records for ``obj``: its class, or the gpunn class it derives from (the
    book's Layer_Dense is saved as Dense)."""
    return next(cls.__name__ for cls in type(obj).__mro__ if known.get(cls.__name__) is cls)


def architecture(layers: list[_layers.Layer]) -> list[dict[str, Any]]:
    return [{"type": kind(layer, LAYERS), "config": layer_config(layer)} for layer in layers]


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


def read(path: str | os.PathLike, kind: str = FORMAT) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and metadata of a gpunn file of ``kind`` (a model, or PARAMETERS), checked;
    ValueError for anything else."""
    from safetensors import safe_open

    what = "model" if kind == FORMAT else "parameters"
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
    if not isinstance(meta, dict) or meta.get("format") != kind:
        raise ValueError(f"{path} is not a valid gpunn {what} file (a safetensors file without "
                         f"gpunn's metadata for {what})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} is a gpunn {what} file of version {meta.get('version')}; this "
                         f"gpunn reads version {VERSION}")
    if kind == FORMAT and "params" not in tensors:
        raise ValueError(f"{path} is not a valid gpunn model file (no params tensor)")
    return tensors, meta


#: The format of ``save_parameters``: weights and biases alone, as the book's save_parameters.
PARAMETERS = "gpunn.parameters"


def save_parameters(path: str | os.PathLike, params: list[np.ndarray]) -> None:
    """W1, b1, W2, b2, ... to one .safetensors file, atomically (no architecture, no optimizer)."""
    from safetensors.numpy import save as to_bytes

    tensors = {f"{i:04d}": np.ascontiguousarray(p) for i, p in enumerate(params)}
    meta = {"format": PARAMETERS, "version": VERSION, "count": len(params)}
    write_atomic(Path(path), to_bytes(tensors, metadata={"gpunn": json.dumps(meta)}))


def read_parameters(path: str | os.PathLike) -> list[np.ndarray]:
    """What ``save_parameters`` wrote, in order."""
    tensors, meta = read(path, PARAMETERS)
    if sorted(tensors) != [f"{i:04d}" for i in range(meta.get("count", -1))]:
        raise ValueError(f"{path} is not a valid gpunn parameters file (its arrays are not "
                         f"W1, b1, W2, b2, ...)")
    return [tensors[key] for key in sorted(tensors)]


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


def state_for(network: Network, tensors: dict[str, np.ndarray], meta: dict[str, Any],
              path: Any = "") -> dict[str, Any]:
    """The file's state dict, checked against ``network`` (same architecture and optimizer,
    arrays of the right sizes): what ``network.load_state_dict`` takes. Nothing is written."""
    saved = meta["layers"]
    mine = architecture(network.layers)
    if len(saved) != len(mine):
        raise ValueError(f"{path} holds a model of {len(saved)} layers; this one has {len(mine)}")
    for i, (a, b) in enumerate(zip(saved, mine)):
        if a["type"] != b["type"] or a["config"] != b["config"]:
            raise ValueError(f"{path} does not match this model at layer {i}: the file has "
                             f"{a['type']}({a['config']}), the model {b['type']}({b['config']})")
    opt_spec = meta["optimizer"]
    if opt_spec["type"] != kind(network.optimizer, OPTIMIZERS):
        raise ValueError(f"{path} was saved with {opt_spec['type']}; this model uses "
                         f"{kind(network.optimizer, OPTIMIZERS)}")
    buffers = {key[len("optimizer."):]: values for key, values in tensors.items()
               if key.startswith("optimizer.")}
    state = {"params": tensors["params"],
             "optimizer": {"state": buffers, "iterations": int(opt_spec["iterations"]),
                           "current_learning_rate": float(opt_spec["current_learning_rate"])}}
    network.check_state_dict(state, str(path))
    return state


TRAINING_KEYS = ("epoch", "rng", "dropout_rngs", "history", "history_epochs")


def read_checkpoint(network: Network, path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint written by ``fit(checkpoint=...)``: its network state dict, checked against
    ``network``, and where training stood. Everything is checked before anything is used."""
    tensors, meta = read(path)
    training = meta.get("training")
    if training is None:
        raise ValueError(f"{path} is a saved model, not a checkpoint written by "
                         f"fit(checkpoint=...): it has no training state to resume")
    missing = [key for key in TRAINING_KEYS if key not in training]
    if missing or not isinstance(training["epoch"], int) or training["epoch"] < 0:
        raise ValueError(f"{path} is not a valid gpunn checkpoint (its training state lacks "
                         f"{missing or 'a whole epoch count'})")
    return state_for(network, tensors, meta, path), training
