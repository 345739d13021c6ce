"""A network: layers and a loss over one flat parameter buffer, on one backend.

``Sequential.compile`` builds one. It folds each ReLU into the Dense layer before it (and links
Dense -> ReLU -> Dense, whose upper GEMM can do the lower layer's ReLU and bias gradients), lays
every weight and bias out in one flat buffer (gradients in a second, the optimizer's state in more
of the same shape, so one backend call updates all of them) and runs forward and backward passes.
``state_dict()`` and ``load_state_dict()`` are the one way its state is read and put back: saving,
checkpoints, ``to()`` and the rollback after a diverged epoch all go through them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from . import checks
from .backends import Backend
from .backends.bf16 import BF16_BITS
from .layers import Dense, Layer, ReLU, Softmax
from .losses import Loss, SoftmaxCrossEntropy
from .optimizers import Optimizer

#: Rows per forward pass in ``evaluate``/``predict`` when no batch size is given.
INFERENCE_ROWS = 8192


def check_chain(layers: list[Layer], loss: Loss) -> None:
    """Each Dense layer must take as many inputs as the Dense before it gives, and the loss must
    fit the last layer."""
    previous: tuple[int, Dense] | None = None
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense):
            if previous is not None and previous[1].n_neurons != layer.n_inputs:
                j, before = previous
                raise ValueError(
                    f"layer sizes do not chain: layer {i} ({layer!r}) takes {layer.n_inputs} "
                    f"inputs but layer {j} ({before!r}) gives {before.n_neurons}")
            previous = (i, layer)
    last = layers[-1]
    if isinstance(loss, SoftmaxCrossEntropy) and isinstance(last, Softmax):
        raise ValueError("SoftmaxCrossEntropy applies the softmax itself: remove the final "
                         "Softmax layer, or use CategoricalCrossEntropy after it")
    if loss.expects_last is not None and not isinstance(last, loss.expects_last):
        raise ValueError(f"{type(loss).__name__} expects the last layer to be "
                         f"{loss.expects_last.__name__}; got {last!r}")


def fold(layers: list[Layer]) -> int:
    """Fold each ReLU into the Dense before it and link Dense -> ReLU -> Dense pairs; returns
    the index of the first trainable layer (which needs no input gradient)."""
    dense = [layer for layer in layers if isinstance(layer, Dense)]
    for layer in dense:
        layer.activation, layer.need_dinputs = None, True
        layer.relu_below, layer.relu_above, layer.relu_mask = None, None, None
        layer.rounded.clear()
    for before, layer in zip([None] + layers[:-1], layers):
        if isinstance(layer, ReLU):
            layer.folded = isinstance(before, Dense)
            if layer.folded:
                before.activation = "relu"
    # Dense -> ReLU -> Dense: the upper GEMM for dinputs does the lower ReLU and bias grads.
    for lower, relu, upper in zip(layers, layers[1:], layers[2:]):
        if isinstance(relu, ReLU) and relu.folded and isinstance(upper, Dense):
            upper.relu_below, lower.relu_above = lower, upper
    first = next(i for i, layer in enumerate(layers) if layer.trainable)
    layers[first].need_dinputs = False
    return first


def check_params(dense: list[Dense], params: list[Any]) -> list[np.ndarray]:
    """W1, b1, W2, b2, ... checked against the Dense layers' shapes, as host arrays (a bias may
    come as a vector)."""
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
        arr = checks.host_array(value)
        if is_bias and arr.shape == (want[1],):
            arr = arr.reshape(want)
        if arr.shape != want:
            raise ValueError(f"{what} must have shape {want}; got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise TypeError(f"{what} must hold finite real numbers; got dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} must hold finite real numbers; it holds "
                             f"{arr[~np.isfinite(arr)][0]}")
        checked.append(arr)
    return checked


class LayerStack:
    """What a list of layers says by itself: its Dense layers, inputs and outputs."""

    layers: list[Layer]

    @property
    def dense_layers(self) -> list[Dense]:
        return [layer for layer in self.layers if isinstance(layer, Dense)]

    @property
    def n_inputs(self) -> int:
        return self.dense_layers[0].n_inputs

    @property
    def n_outputs(self) -> int:
        return self.dense_layers[-1].n_neurons

    def summary_rows(self) -> list[tuple[str, str, int]]:
        """Per layer: what it is, its output shape (None: any number of samples), its
        parameter count."""
        rows, width = [], self.n_inputs
        for layer in self.layers:
            count = 0
            if isinstance(layer, Dense):
                width, count = layer.n_neurons, layer.n_inputs * layer.n_neurons + layer.n_neurons
            rows.append((repr(layer), f"(None, {width})", count))
        return rows


class Network(LayerStack):
    """``layers`` and ``loss`` on ``backend``, every parameter a view into one flat buffer, the
    ``optimizer``'s state laid out the same way; ``weights`` (W1, b1, ...) the starting values."""

    def __init__(self, layers: list[Layer], loss: Loss, optimizer: Optimizer, backend: Backend,
                 dtype: Any, weights: list[np.ndarray]) -> None:
        self.layers, self.loss, self.optimizer = layers, loss, optimizer
        self.backend, self.dtype = backend, np.dtype(dtype)
        #: What is reported besides the loss (Sequential.compile's ``metrics``).
        self.metrics: tuple[str, ...] = ("accuracy",) if loss.classification else ()
        #: Distributed training: the ranks' Group (None: one process) and the share of the
        #: whole batch this rank's current step holds, which scales its gradient before the sum.
        self.group: Any = None
        self.share = 1.0
        self.whole = 0  # the whole batch's rows (0: not distributed)
        self.first_trainable = fold(layers)
        total = sum(a.size for a in weights)
        self.params = backend.asarray(np.concatenate([a.ravel() for a in weights]), dtype=self.dtype)
        self.grads = backend.zeros((total,), self.dtype)
        optimizer.build(backend, total, self.dtype)
        #: Where each Dense layer's weights lie in ``params``; under precision "bf16" also in
        #: ``params16``, their bfloat16 copies, rounded in one pass per forward (``forward``).
        self.weight_parts: list[tuple[Dense, Any, slice]] = []
        self.params16: Any = None
        offset = 0
        for layer in self.dense_layers:
            views = {}
            for kind, shape in (("weight", layer.weights.shape), ("bias", layer.biases.shape)):
                part = slice(offset, offset + shape[0] * shape[1])
                views[kind] = self.params[part].reshape(shape)
                if kind == "weight":
                    self.weight_parts.append((layer, views[kind], part))
                views["d" + kind] = self.grads[part].reshape(shape)
                for name, buf in optimizer.state.items():  # the book's weight_momentums, ...
                    setattr(layer, f"{kind}_{name}", buf[part].reshape(shape))
                offset = part.stop
            layer.weights, layer.biases = views["weight"], views["bias"]
            layer.dweights, layer.dbiases = views["dweight"], views["dbias"]
        for part in [*layers, loss]:
            part.bind(backend)

    def __repr__(self) -> str:
        return f"Network([{', '.join(map(repr, self.layers))}], backend={self.backend.name!r})"

    @property
    def regularized(self) -> bool:
        return any(layer.regularized for layer in self.dense_layers)

    # ---- parameters and state --------------------------------------------------------------

    def get_params(self) -> list[np.ndarray]:
        """NumPy copies of the parameters, in the order W1, b1, W2, b2, ..."""
        out = []
        for layer in self.dense_layers:
            out += [self.backend.to_numpy(layer.weights), self.backend.to_numpy(layer.biases)]
        return out

    def set_params(self, params: list[Any]) -> None:
        """Replace W1, b1, W2, b2, ...; all are checked before any is written."""
        checked = check_params(self.dense_layers, params)
        for layer, weights, biases in zip(self.dense_layers, checked[::2], checked[1::2]):
            layer.weights[...] = self.backend.asarray(weights, dtype=self.dtype)
            layer.biases[...] = self.backend.asarray(biases, dtype=self.dtype)

    def state_dict(self, host: bool = True) -> dict[str, Any]:
        """The flat parameters and the optimizer's state: NumPy copies when ``host`` (saving,
        moving between backends), else copies on the device (rolling back an epoch)."""
        params = self.backend.to_numpy(self.params) if host else self.params.copy()
        return {"params": params, "optimizer": self.optimizer.state_dict(host)}

    def check_state_dict(self, state: dict[str, Any], where: str = "the state") -> None:
        """Raise ValueError unless ``state`` fits this network (nothing is written)."""
        params = state.get("params")
        if params is None or tuple(params.shape) != tuple(self.params.shape):
            have = "no array" if params is None else f"shape {tuple(params.shape)}"
            raise ValueError(f"{where}: params has {have}; the model needs shape "
                             f"{tuple(self.params.shape)} (one flat array)")
        self.optimizer.check_state_dict(state.get("optimizer", {}), where)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put ``state`` (from ``state_dict``, from any backend) back in place, after checking
        all of it. Buffers keep their addresses, so recorded graphs stay valid."""
        self.check_state_dict(state)
        self.params[...] = self.backend.asarray(state["params"], dtype=self.dtype)
        self.optimizer.load_state_dict(state["optimizer"])

    # ---- forward and backward --------------------------------------------------------------

    def forward(self, x: Any, training: bool) -> Any:
        """The outputs of the last layer (ReLUs folded into the Dense before them are skipped)."""
        if self.backend.precision == "bf16":
            self.round_weights()
        for layer in self.layers:
            if isinstance(layer, ReLU) and layer.folded:
                layer.output = x  # the Dense before already applied it
                continue
            x = layer.forward(x, training)
        return x

    def round_weights(self) -> None:
        """Precision "bf16": every weight's bfloat16 copy (the GEMM operand) in one pass over the
        flat parameters, where each Dense layer would round its own (a kernel each), handed to
        the layers as copies written along with their weights (``Dense.rounded``). Rounded from
        the current values every forward pass, so a copy is never older than its weights."""
        if self.params16 is None:
            self.params16 = self.backend.empty(self.params.shape, BF16_BITS)
        self.backend.to_bf16(self.params, out=self.params16)
        for layer, weights, part in self.weight_parts:  # taken while layer.weights is that view
            layer.rounded["weights16"] = (weights, self.params16[part].reshape(weights.shape))

    def backward(self, dvalues: Any) -> None:
        """Gradients of every trainable layer into the flat gradient buffer."""
        # The loss's gradient in bf16, where the pass that wrote dvalues wrote one (taken once).
        copy, last = getattr(self.loss, "dinputs16", None), self.layers[-1]
        if copy is not None and dvalues is self.loss.dinputs and isinstance(last, Dense):
            last.rounded["dvalues16"] = (dvalues, copy)
            self.loss.dinputs16 = None
        # Each layer's weight gradients may run beside the layers below (Dense.backward puts
        # them aside); all are done when the pass is, before anything reads them.
        with self.backend.overlap():
            for layer in reversed(self.layers[self.first_trainable:]):
                if isinstance(layer, ReLU) and layer.folded:
                    continue
                dvalues = layer.backward(dvalues)

    def step(self, x: Any, y: Any) -> tuple[Any, Any]:
        """One optimizer step on a batch; returns per-sample losses and the outputs."""
        outputs = self.forward(x, training=True)
        losses = self.loss.train(outputs, y)
        self.backward(self.loss.dinputs)
        self.reduce_gradients()
        self.optimizer.step(self.params, self.grads)
        return losses, outputs

    def reduce_gradients(self) -> None:
        """Distributed training: this rank's gradient (the mean over its rows) scaled by its
        share of the whole batch, then summed in place over the ranks: the gradient of the whole
        batch's mean loss, on every rank. Nothing in one process."""
        if self.group is None:
            return
        if self.share != 1.0:
            self.backend.xp.multiply(self.grads, self.share, out=self.grads)
        self.group.allreduce(self.grads)

    def empty_step(self) -> None:
        """A distributed step on a rank whose part of the batch is empty: it adds nothing to the
        sum, but joins it and applies the same update as the others."""
        self.grads[...] = 0
        self.reduce_gradients()
        self.optimizer.step(self.params, self.grads)

    def regularization_loss(self) -> float:
        return float(sum(layer.regularization_loss() for layer in self.dense_layers
                         if layer.regularized))

    # ---- data and inference ----------------------------------------------------------------

    def prepare(self, X: Any, y: Any, name: str = "") -> tuple[Any, Any]:
        """Check X and y against the network, and put them on the device in working dtypes."""
        X = checks.features(X, f"{name}X", self.n_inputs, self.dtype)
        y = self.loss.prepare_targets(y, X.shape[0], self.n_outputs)
        y = checks.finite_in(y, self.loss.targets_dtype(self.dtype), f"{name}y")
        bk = self.backend
        return bk.asarray(X), bk.asarray(y)

    def evaluate_chunks(self, chunks: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        """Mean data loss and accuracy over prepared (X, y) chunks, without dropout."""
        loss_sum = correct = 0
        n = 0
        for xb, yb in chunks:
            outputs = self.forward(xb, training=False)
            loss_sum = loss_sum + self.loss.sample_losses(outputs, yb).sum(dtype=np.float64)
            correct = correct + self.loss.count_correct(outputs, yb)
            n += xb.shape[0]
        return {"loss": float(loss_sum) / n, "accuracy": float(correct) / n}

    def predict_chunks(self, chunks: Iterable[Any]) -> np.ndarray:
        """The outputs for prepared X chunks, joined, as a NumPy array."""
        parts = [self.backend.to_numpy(self.loss.predictions(self.forward(xb, training=False)))
                 for xb in chunks]
        return np.concatenate(parts)
