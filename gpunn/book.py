"""The book's own names. A chapter of "Neural Networks from Scratch" (9 to 22) ports by deleting
its class definitions and adding ``from gpunn.book import *``: the same calls, the same defaults,
the same numbers.

- Initial weights and dropout masks come from NumPy's global generator, as the book draws them:
  after ``nnfs.init()`` (or this module's ``init()``, which seeds it the same way) a ported
  chapter starts from the book's exact weights. gpunn's own classes draw from gpunn's generator
  instead (``gpunn.set_seed``), so the two seedings never disturb each other.
- ``init``, ``spiral_data``, ``vertical_data`` and ``sine_data`` stand in for nnfs's (not in
  ``*``: ``from gpunn.book import init, spiral_data``); they draw from the same global generator,
  so they give nnfs's data. Unlike ``nnfs.init()``, ``init()`` leaves NumPy's functions alone.
- On a GPU: after ``gpunn.use("cupy")`` these data functions hand out CuPy arrays and every layer,
  loss and optimizer follows them there (the fused kernels and cuBLAS underneath); or move the
  data yourself (``X, y = cupy.asarray(X), cupy.asarray(y)``).
- ``Model`` is the book's (chapters 18-22) as a thin face over ``Sequential``, with its fast
  paths; ``save``/``Model.load`` and ``save_parameters``/``load_parameters`` write .safetensors
  files (the book pickles; ``pickle.dump(model)`` works too).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from . import checks, datasets, io
from .backends import Backend, pinned
from .layers import Dense, Dropout, Linear, ReLU, Sigmoid, Softmax
from .losses import (
    BinaryCrossEntropy,
    CategoricalCrossEntropy,
    Loss,
    MeanAbsoluteError,
    MeanSquaredError,
    RegressionLoss,
    SoftmaxCrossEntropy,
)
from .metrics import Accuracy, CategoricalAccuracy, RegressionAccuracy
from .model import Sequential, load
from .optimizers import SGD, Adagrad, Adam, Optimizer, RMSprop
from .training.callbacks import Callback

__all__ = [
    "Layer_Dense", "Layer_Dropout", "Layer_Input", "Activation_ReLU", "Activation_Softmax",
    "Activation_Sigmoid", "Activation_Linear", "Activation_Softmax_Loss_CategoricalCrossentropy",
    "Loss_CategoricalCrossentropy", "Loss_BinaryCrossentropy", "Loss_MeanSquaredError",
    "Loss_MeanAbsoluteError", "Optimizer_SGD", "Optimizer_Adagrad", "Optimizer_RMSprop",
    "Optimizer_Adam", "Accuracy_Categorical", "Accuracy_Regression", "Model",
]


# ---- nnfs's stand-ins -------------------------------------------------------------------------

def init(random_seed: int = 0) -> None:
    """Seed NumPy's global generator, as ``nnfs.init()`` does, for the book's data and weights."""
    np.random.seed(random_seed)


def _placed(*arrays: np.ndarray) -> tuple[Any, ...]:
    """The data on the backend ``gpunn.use`` chose (NumPy arrays when none was chosen)."""
    bk = pinned()
    return arrays if bk is None else tuple(bk.asarray(a) for a in arrays)


def spiral_data(samples: int, classes: int) -> tuple[Any, Any]:
    """nnfs's spiral data, drawn from NumPy's global generator."""
    return _placed(*datasets.spiral_data(samples, classes, rng=np.random))


def vertical_data(samples: int, classes: int) -> tuple[Any, Any]:
    """nnfs's vertical data, drawn from NumPy's global generator."""
    return _placed(*datasets.vertical_data(samples, classes, rng=np.random))


def sine_data(samples: int = 1000) -> tuple[Any, Any]:
    """nnfs's sine data."""
    return _placed(*datasets.sine_data(samples))


# ---- layers, activations, losses, optimizers, accuracy ----------------------------------------

class Layer_Dense(Dense):
    """The book's Dense layer: ``weight_scale * np.random.randn(n_inputs, n_neurons)`` weights
    from NumPy's global generator (chapter 17 uses ``weight_scale=0.1``) and zero biases."""

    def __init__(self, n_inputs: int, n_neurons: int, weight_regularizer_l1: float = 0,
                 weight_regularizer_l2: float = 0, bias_regularizer_l1: float = 0,
                 bias_regularizer_l2: float = 0, *, weight_scale: float = 0.01) -> None:
        self.weight_scale = checks.real_number(weight_scale, "weight_scale", 0, low_open=True)
        super().__init__(n_inputs, n_neurons, "nnfs", weight_regularizer_l1, weight_regularizer_l2,
                         bias_regularizer_l1, bias_regularizer_l2)

    def _initial_weights(self, rng: np.random.Generator) -> np.ndarray:
        return self.weight_scale * np.random.randn(self.n_inputs, self.n_neurons)


class Layer_Dropout(Dropout):
    """The book's dropout layer (``rate``: the share of inputs dropped), its masks drawn with
    ``np.random.binomial`` from NumPy's global generator, as the book draws them."""

    def _draw_mask(self, bk: Backend, shape: tuple[int, ...], dtype: Any) -> Any:
        keep = 1 - self.rate
        return bk.asarray(np.random.binomial(1, keep, size=shape) / keep, dtype=dtype)

    @property
    def binary_mask(self) -> Any:
        """The book's name for the scaled mask of the last forward pass."""
        return self.mask


class Layer_Input:
    """The book's input layer: its output is the data. ``Model`` needs none; it is here so
    chapter code that makes one runs."""

    def __init__(self) -> None:
        self.output: Any = None

    def forward(self, inputs: Any, training: bool = True) -> None:
        self.output = inputs


Activation_ReLU = ReLU
Activation_Softmax = Softmax
Activation_Sigmoid = Sigmoid
Activation_Linear = Linear
Activation_Softmax_Loss_CategoricalCrossentropy = SoftmaxCrossEntropy
Loss_CategoricalCrossentropy = CategoricalCrossEntropy
Loss_BinaryCrossentropy = BinaryCrossEntropy
Loss_MeanSquaredError = MeanSquaredError
Loss_MeanAbsoluteError = MeanAbsoluteError
Optimizer_SGD = SGD
Optimizer_Adagrad = Adagrad
Optimizer_RMSprop = RMSprop
Optimizer_Adam = Adam
Accuracy_Categorical = CategoricalAccuracy
Accuracy_Regression = RegressionAccuracy


# ---- the book's Model -------------------------------------------------------------------------

class Model:
    """The book's Model: ``add`` layers, ``set(loss=, optimizer=, accuracy=)``, ``finalize()``,
    ``train``, ``evaluate``, ``predict``; trained by a ``Sequential`` on the backend
    ``gpunn.use`` chose (else GPUNN_BACKEND or auto), with its planned and graph-replayed steps.

    ``train`` prints what the book prints: with ``batch_size=None``, chapter 18's line every
    ``print_every`` epochs and one validation line at the end; with a batch size, chapter 19's
    epoch, step (every ``print_every`` steps), training and validation lines. Batches are taken
    in order, not shuffled, as the book does."""

    def __init__(self, *, dtype: str = "float32") -> None:
        """``dtype``: what the network computes in (the book's nnfs.init() makes it float32)."""
        self.dtype = dtype
        self.layers: list[Any] = []
        self.loss: Loss | None = None
        self.optimizer: Optimizer | None = None
        self.accuracy: Accuracy | None = None
        self.sequential: Sequential | None = None
        self.output_layer_activation: Any = None

    def add(self, layer: Any) -> None:
        self.layers.append(layer)

    def set(self, *, loss: Loss | None = None, optimizer: Optimizer | None = None,
            accuracy: Accuracy | None = None) -> None:
        if loss is not None:
            self.loss = loss
        if optimizer is not None:
            self.optimizer = optimizer
        if accuracy is not None:
            self.accuracy = accuracy

    def finalize(self) -> None:
        """Build the network. A final Softmax with categorical cross-entropy trains as one fused
        SoftmaxCrossEntropy (the book fuses their backward pass; gpunn the forward pass too)."""
        if self.loss is None or self.optimizer is None:
            raise RuntimeError("call set(loss=..., optimizer=...) before finalize()")
        layers = [layer for layer in self.layers if not isinstance(layer, Layer_Input)]
        if not layers:
            raise RuntimeError("add() at least one layer before finalize()")
        self.output_layer_activation = layers[-1]
        loss = self.loss
        if isinstance(layers[-1], Softmax) and type(loss) is CategoricalCrossEntropy:
            layers, loss = layers[:-1], SoftmaxCrossEntropy()
        trainable = [layer for layer in layers if layer.trainable]
        for each in {id(self.loss): self.loss, id(loss): loss}.values():
            each.remember_trainable_layers(trainable)
        self.sequential = Sequential(layers)
        self.sequential.compile(loss, self.optimizer, backend=pinned(), dtype=self.dtype)
        if self.accuracy is None:
            self.accuracy = RegressionAccuracy() if isinstance(loss, RegressionLoss) else \
                CategoricalAccuracy(binary=isinstance(loss, BinaryCrossEntropy))

    def _compiled(self, what: str) -> Sequential:
        if self.sequential is None:
            raise RuntimeError(f"call finalize() before {what}")
        return self.sequential

    # ---- training and inference --------------------------------------------------------------

    def train(self, X: Any, y: Any, *, epochs: int = 1, batch_size: int | None = None,
              print_every: int = 1, validation_data: tuple[Any, Any] | None = None) -> None:
        seq = self._compiled("train()")
        self.accuracy.init(y)
        if batch_size is None:
            lines = EpochPrinter(seq.optimizer, print_every)
            seq.fit(X, y, epochs=epochs, batch_size=None, shuffle=False, verbose=0,
                    callbacks=[lines])
            if validation_data is not None:
                self.evaluate(*validation_data)
            return
        net = seq.network
        X, y = net.prepare(X, y)
        n = X.shape[0]
        steps = math.ceil(n / batch_size)
        net.optimizer.sync_schedule()
        net.loss.fit_begin(y)
        try:
            for epoch in range(1, epochs + 1):
                print(f"epoch: {epoch}")
                data_sum = correct = 0.0
                for step in range(steps):
                    start, stop = step * batch_size, min((step + 1) * batch_size, n)
                    loss_sum, right, reg = self._train_step(X, y, start, stop)
                    data_sum, correct = data_sum + loss_sum, correct + right
                    if not step % print_every or step == steps - 1:
                        rows = stop - start
                        print(_line(f"step: {step}, ", right / rows, loss_sum / rows, reg,
                                    net.optimizer.current_learning_rate))
                print(_line("training, ", correct / n, data_sum / n, net.regularization_loss(),
                            net.optimizer.current_learning_rate))
                if validation_data is not None:
                    self.evaluate(*validation_data, batch_size=batch_size)
        finally:
            net.loss.fit_end()

    def _train_step(self, X: Any, y: Any, start: int, stop: int) -> tuple[float, float, float]:
        """One optimizer step on rows start:stop: (their loss sum, their correct count, the
        penalty of the parameters the step started from)."""
        seq = self.sequential
        reg = seq.network.regularization_loss()
        step = seq.steps.get(stop - start, 1)
        step.load(X, y, start, stop)
        seq.steps.totals.fill(0)
        step.run()
        loss_sum, right = seq.network.backend.to_numpy(seq.steps.totals[0])
        return float(loss_sum), float(right), reg

    def evaluate(self, X_val: Any, y_val: Any, *, batch_size: int | None = None) -> dict[str, float]:
        """Prints and returns the validation data loss and accuracy, as the book's evaluate."""
        result = self._compiled("evaluate()").evaluate(X_val, y_val, batch_size=batch_size)
        print(f"validation, acc: {result['accuracy']:.3f}, loss: {result['loss']:.3f}")
        return result

    def predict(self, X: Any, *, batch_size: int | None = None) -> np.ndarray:
        """The last layer's outputs (probabilities after a Softmax), as a NumPy array."""
        return self._compiled("predict()").predict(X, batch_size=batch_size)

    # ---- parameters and files ----------------------------------------------------------------

    def get_parameters(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weights, biases) of each trainable layer, as NumPy copies."""
        flat = self._compiled("get_parameters()").get_params()
        return list(zip(flat[::2], flat[1::2]))

    def set_parameters(self, parameters: list[tuple[Any, Any]]) -> None:
        """Every trainable layer's (weights, biases), all checked before any is written."""
        self._compiled("set_parameters()").set_params([a for pair in parameters for a in pair])

    def save_parameters(self, path: str | os.PathLike) -> None:
        """The weights and biases alone, to a .safetensors file (the book pickles them)."""
        io.save_parameters(path, self._compiled("save_parameters()").get_params())

    def load_parameters(self, path: str | os.PathLike) -> None:
        """Weights and biases from a file ``save_parameters`` wrote."""
        self._compiled("load_parameters()").set_params(io.read_parameters(path))

    def save(self, path: str | os.PathLike) -> None:
        """The whole model (architecture, parameters, optimizer state) to a .safetensors file;
        ``Model.load(path)`` gives it back (the book pickles it)."""
        self._compiled("save()").save(path)

    @staticmethod
    def load(path: str | os.PathLike) -> Model:
        """A finalized Model from a file ``save`` wrote."""
        seq = load(path, backend=pinned())
        model = Model()
        model.layers, model.loss, model.optimizer = list(seq.layers), seq.loss, seq.optimizer
        model.sequential = seq
        fused = isinstance(seq.loss, SoftmaxCrossEntropy)
        model.output_layer_activation = Softmax() if fused else seq.layers[-1]
        model.accuracy = RegressionAccuracy() if isinstance(seq.loss, RegressionLoss) else \
            CategoricalAccuracy(binary=isinstance(seq.loss, BinaryCrossEntropy))
        return model


def _line(head: str, accuracy: float, data_loss: float, reg_loss: float, lr: float) -> str:
    return (f"{head}acc: {accuracy:.3f}, loss: {data_loss + reg_loss:.3f} (data_loss: "
            f"{data_loss:.3f}, reg_loss: {reg_loss:.3f}), lr: {lr}")


class EpochPrinter(Callback):
    """Chapter 18's line every ``print_every`` epochs of a full-batch fit, with the learning
    rate each epoch's step used (the book's ``current_learning_rate``)."""

    def __init__(self, optimizer: Optimizer, print_every: int) -> None:
        self.optimizer, self.print_every = optimizer, print_every
        self.first_step = optimizer.iterations  # the step count the first epoch starts from

    def on_epoch_end(self, loop: Any, epoch: int, logs: dict[str, float]) -> None:
        if epoch % self.print_every:
            return
        opt, t = self.optimizer, self.first_step + epoch - 1
        lr = opt.learning_rate / (1.0 + opt.decay * t) if opt.decay else opt.learning_rate
        print(_line(f"epoch: {epoch}, ", logs["accuracy"], logs["data_loss"], logs["reg_loss"], lr))
