"""Losses with the book's definitions. Log inputs are clipped to [1e-7, 1 - 1e-7]; gradients are
averaged over the samples, so the learning rate does not depend on the batch size.

Each loss also keeps the book's running totals (``calculate`` adds to them, ``new_pass`` clears
them, ``calculate_accumulated`` gives their mean) and reaches the penalties of the layers it was
told of (``remember_trainable_layers``), so the book's training loops port unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import checks
from .backends.base import CLIP
from .backends.bf16 import BF16_BITS
from .layers import Buffered, Layer, Sigmoid, Softmax


class Loss(Buffered):
    """``forward(outputs, y)`` gives per-sample losses, ``backward(dvalues, y)`` sets ``.dinputs``,
    ``calculate(outputs, y)`` gives the mean (the book's names)."""

    #: The layer type the model's last layer must be, when the loss needs one.
    expects_last: type[Layer] | None = None
    classification = False

    def __init__(self) -> None:
        super().__init__()
        self.trainable_layers: list[Layer] = []
        self.new_pass()

    def prepare_targets(self, y: Any, n_samples: int, n_outputs: int) -> np.ndarray:
        """Check ``y`` against the data and model, returning host targets in working form."""
        return checks.targets(y, n_samples, n_outputs)

    def targets_dtype(self, dtype: Any) -> Any:
        return dtype

    def fit_begin(self, y: Any) -> None:
        """``fit`` starts on targets ``y`` (the regression losses take their accuracy precision)."""

    def fit_end(self) -> None:
        """``fit`` is over, however it ended."""

    # ---- the book's bookkeeping ---------------------------------------------------------------

    def remember_trainable_layers(self, layers: list[Layer]) -> None:
        """The layers whose penalties ``regularization_loss()`` sums when given none."""
        self.trainable_layers = list(layers)

    def regularization_loss(self, *layers: Layer) -> float:
        """The L1/L2 penalties of the given layers (else of the remembered ones), summed."""
        return float(sum(layer.regularization_loss() for layer in layers or self.trainable_layers
                         if layer.trainable))

    def calculate(self, output: Any, y: Any, *,
                  include_regularization: bool = False) -> float | tuple[float, float]:
        """The mean loss over the samples, added to the running totals too (the book's
        ``Loss.calculate``); with ``include_regularization``, (data loss, penalties)."""
        losses = self.sample_losses(output, y)
        self.accumulate(losses)
        data_loss = float(losses.mean())
        if not include_regularization:
            return data_loss
        return data_loss, self.regularization_loss()

    def accumulate(self, losses: Any) -> None:
        self.accumulated_sum += float(losses.sum())
        self.accumulated_count += len(losses)

    def new_pass(self) -> None:
        """Clear the running totals (at the start of an epoch)."""
        self.accumulated_sum, self.accumulated_count = 0.0, 0

    def calculate_accumulated(self, *, include_regularization: bool = False
                              ) -> float | tuple[float, float]:
        """The mean loss over every sample since ``new_pass``; with ``include_regularization``,
        (that, the penalties now)."""
        data_loss = self.accumulated_sum / self.accumulated_count
        if not include_regularization:
            return data_loss
        return data_loss, self.regularization_loss()

    # ---- what models use ---------------------------------------------------------------------

    def sample_losses(self, outputs: Any, y: Any) -> Any:
        """Per-sample losses, without the gradient."""
        return self.forward(outputs, y)

    def train(self, outputs: Any, y: Any) -> Any:
        """Per-sample losses, with ``.dinputs`` set for the backward pass."""
        losses = self.forward(outputs, y)
        self.backward(outputs, y)
        return losses

    def predictions(self, outputs: Any) -> Any:
        """What ``predict`` returns for the model's last outputs."""
        return outputs

    def count_correct(self, outputs: Any, y: Any) -> Any:
        """How many samples the outputs got right (summed per-sample accuracy; a device scalar)."""
        raise NotImplementedError

    def losses_buffer(self, n: int, dtype: Any) -> Any:
        """Where per-sample losses of ``n`` samples go."""
        return self.buffer("losses", (n,), dtype)

    def _on(self, outputs: Any, y: Any, name: str = "y_pred") -> tuple[Any, Any]:
        """The backend for (outputs, y), and y on it: one device for both, never mixed. A model
        checked its targets once, when ``fit`` began; called on its own (the book's way), the
        loss checks them here, as the model would, against ``outputs``."""
        bk = self.follow(outputs, y, names=(name, "y_true"))
        if self.bound:
            return bk, bk.asarray(y)
        if getattr(outputs, "ndim", None) != 2:
            raise ValueError(f"{name} must be 2-D (samples, outputs); "
                             f"got shape {getattr(outputs, 'shape', type(outputs).__name__)}")
        targets = self.prepare_targets(y, *outputs.shape)
        return bk, bk.asarray(targets.astype(self.targets_dtype(outputs.dtype), copy=False))


class CategoricalCrossEntropy(Loss):
    """-log(p[true class]), for probabilities from an explicit ``Softmax`` layer."""

    expects_last = Softmax
    classification = True

    def prepare_targets(self, y: Any, n_samples: int, n_outputs: int) -> np.ndarray:
        return checks.class_labels(y, n_samples, n_outputs)

    def targets_dtype(self, dtype: Any) -> Any:
        return np.int64

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        bk, y_true = self._on(y_pred, y_true)
        xp = bk.xp
        y_true = self._labels(y_true)
        rows = xp.arange(y_pred.shape[0])
        losses = self.losses_buffer(y_pred.shape[0], y_pred.dtype)
        xp.log(xp.clip(y_pred[rows, y_true], CLIP, 1 - CLIP), out=losses)
        return xp.negative(losses, out=losses)

    def _labels(self, y_true: Any) -> Any:
        """Class indices; one-hot rows are accepted too, as the book's classes do."""
        return y_true.argmax(axis=1) if y_true.ndim == 2 else y_true

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        """d(-log p_true)/dp = -1/p at the true class, 0 elsewhere; averaged over samples."""
        bk, y_true = self._on(dvalues, y_true, "dvalues")
        xp = bk.xp
        y_true = self._labels(y_true)
        n = dvalues.shape[0]
        rows = xp.arange(n)
        self.dinputs = self.buffer("dinputs", dvalues.shape, dvalues.dtype)
        self.dinputs[...] = 0
        self.dinputs[rows, y_true] = -1.0 / (xp.clip(dvalues[rows, y_true], CLIP, 1 - CLIP) * n)
        return self.dinputs

    def count_correct(self, outputs: Any, y: Any) -> Any:
        return self.backend.count_correct(outputs, y)


class SoftmaxCrossEntropy(CategoricalCrossEntropy):
    """Softmax and categorical cross-entropy in one: takes the last Dense layer's outputs
    (logits) and gives the fused gradient (p - onehot) / n, which is cheaper and steadier than
    the two backward passes chained. ``predict`` returns the softmax probabilities.

    As the book's ``Activation_Softmax_Loss_CategoricalCrossentropy``, it holds the two it fuses:
    ``.activation`` (whose ``.output`` are the probabilities) and ``.loss``, whose running totals
    and ``regularization_loss`` the book's loops use."""

    expects_last = None

    def __init__(self) -> None:
        super().__init__()
        self.activation = Softmax()
        self.loss = CategoricalCrossEntropy()
        self.dinputs16: Any = None  # precision "bf16": dinputs in bfloat16, when written with it

    def forward(self, inputs: Any, y_true: Any) -> float:
        """The book's combined class: sets ``.output`` (probabilities), returns the mean loss."""
        bk, y_true = self._on(inputs, y_true, "inputs")
        losses = self._run(inputs, self._labels(y_true), need_grad=False)
        self.activation.output = self.output
        self.loss.accumulate(losses)
        return float(losses.mean())

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        """From the softmax output: dinputs = (p - onehot) / n."""
        bk, y_true = self._on(dvalues, y_true, "dvalues")
        xp = bk.xp
        y_true = self._labels(y_true)
        n = dvalues.shape[0]
        self.dinputs16 = None  # no bf16 copy of this gradient
        self.dinputs = self.buffer("dinputs", dvalues.shape, dvalues.dtype)
        xp.copyto(self.dinputs, dvalues)
        self.dinputs[xp.arange(n), y_true] -= 1
        xp.multiply(self.dinputs, 1.0 / n, out=self.dinputs)
        return self.dinputs

    def calculate(self, output: Any, y: Any, *,
                  include_regularization: bool = False) -> float | tuple[float, float]:
        """The mean loss from logits (running totals on ``.loss``, as the book keeps them)."""
        data_loss = self.forward(output, y)
        if not include_regularization:
            return data_loss
        return data_loss, self.loss.regularization_loss()

    def remember_trainable_layers(self, layers: list[Layer]) -> None:
        super().remember_trainable_layers(layers)
        self.loss.remember_trainable_layers(layers)

    def sample_losses(self, outputs: Any, y: Any) -> Any:
        return self._run(outputs, y, need_grad=False)

    def train(self, outputs: Any, y: Any) -> Any:
        return self._run(outputs, y, need_grad=True)

    def train_totals(self, logits: Any, y: Any, totals: Any) -> Any:
        """As ``train``, also adding the loss sum and the correct count into ``totals`` (two
        float64): the planned step's loss, whose epoch metrics wait on the device."""
        n = logits.shape[0]
        self.output = self.buffer("probs", logits.shape, logits.dtype)
        self.dinputs = self.buffer("dinputs", logits.shape, logits.dtype)
        return self.backend.softmax_cross_entropy_totals(logits, y, self.output, self.dinputs,
                                                         self.losses_buffer(n, logits.dtype), totals,
                                                         self._dinputs16(logits))

    def predictions(self, outputs: Any) -> Any:
        return self.backend.softmax(outputs, out=self.buffer("probs", outputs.shape, outputs.dtype))

    def _run(self, logits: Any, y: Any, need_grad: bool) -> Any:
        n = logits.shape[0]
        self.output = self.buffer("probs", logits.shape, logits.dtype)
        dlogits = dlogits16 = None
        if need_grad:
            dlogits = self.dinputs = self.buffer("dinputs", logits.shape, logits.dtype)
            dlogits16 = self._dinputs16(logits)
        return self.backend.softmax_cross_entropy(logits, y, self.output, dlogits,
                                                  self.losses_buffer(n, logits.dtype), dlogits16)

    def _dinputs16(self, logits: Any) -> Any:
        """Precision "bf16": a buffer for dinputs rounded to bfloat16, written with it (the last
        Dense layer's weight-gradient GEMM reads it; Network.backward hands it over); else None."""
        self.dinputs16 = None
        if self.backend.precision == "bf16":
            self.dinputs16 = self.buffer("dinputs16", logits.shape, BF16_BITS)
        return self.dinputs16

    def count_correct(self, outputs: Any, y: Any) -> Any:
        # argmax of the logits is argmax of the probabilities
        return self.backend.count_correct(outputs, y)


class BinaryCrossEntropy(Loss):
    """-(y log p + (1 - y) log(1 - p)), averaged over outputs, after a ``Sigmoid`` layer."""

    expects_last = Sigmoid
    classification = True

    def prepare_targets(self, y: Any, n_samples: int, n_outputs: int) -> np.ndarray:
        return checks.targets(y, n_samples, n_outputs, low=0.0, high=1.0)

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        bk, y_true = self._on(y_pred, y_true)
        xp = bk.xp
        p = xp.clip(y_pred, CLIP, 1 - CLIP)
        sample = -(y_true * xp.log(p) + (1 - y_true) * xp.log(1 - p))
        losses = self.losses_buffer(y_pred.shape[0], y_pred.dtype)
        return xp.mean(sample, axis=1, out=losses)

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        bk, y_true = self._on(dvalues, y_true, "dvalues")
        xp = bk.xp
        n, outputs = dvalues.shape
        p = xp.clip(dvalues, CLIP, 1 - CLIP)
        self.dinputs = self.buffer("dinputs", dvalues.shape, dvalues.dtype)
        xp.multiply(-(y_true / p - (1 - y_true) / (1 - p)), 1.0 / (outputs * n), out=self.dinputs)
        return self.dinputs

    def count_correct(self, outputs: Any, y: Any) -> Any:
        return ((outputs > 0.5) == (y > 0.5)).mean(axis=1).sum()


class RegressionLoss(Loss):
    """What the regression losses share: accuracy counts predictions within std(y) / 250 of the
    target, as the book does; ``fit`` sets ``precision`` from all its targets, elsewhere it comes
    from the targets at hand."""

    def __init__(self) -> None:
        super().__init__()
        self.precision: float | None = None

    def fit_begin(self, y: Any) -> None:
        self.precision = float(y.std()) / 250

    def fit_end(self) -> None:
        self.precision = None

    def count_correct(self, outputs: Any, y: Any) -> Any:
        precision = self.precision if self.precision is not None else self.backend.xp.std(y) / 250
        return (self.backend.xp.abs(outputs - y) < precision).mean(axis=1).sum()

    def _error_gradient(self, dvalues: Any, y_true: Any, scale: float, sign: bool) -> Any:
        """dinputs = scale * (prediction - y) (its sign, with ``sign``), averaged over outputs
        and samples."""
        bk, y_true = self._on(dvalues, y_true, "dvalues")
        xp = bk.xp
        n, outputs = dvalues.shape
        self.dinputs = self.buffer("dinputs", dvalues.shape, dvalues.dtype)
        xp.subtract(dvalues, y_true, out=self.dinputs)
        if sign:
            xp.sign(self.dinputs, out=self.dinputs)
        xp.multiply(self.dinputs, scale / (outputs * n), out=self.dinputs)
        return self.dinputs


class MeanSquaredError(RegressionLoss):
    """mean((y - prediction)^2) over outputs, for regression (usually after ``Linear``)."""

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        bk, y_true = self._on(y_pred, y_true)
        losses = self.losses_buffer(y_pred.shape[0], y_pred.dtype)
        return bk.xp.mean((y_true - y_pred) ** 2, axis=1, out=losses)

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        """d(y - p)^2/dp = 2 (p - y), averaged over outputs and samples."""
        return self._error_gradient(dvalues, y_true, 2.0, sign=False)


class MeanAbsoluteError(RegressionLoss):
    """mean(|y - prediction|) over outputs, for regression; its gradient is the sign of the
    error, so outliers pull no harder than any other sample."""

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        bk, y_true = self._on(y_pred, y_true)
        losses = self.losses_buffer(y_pred.shape[0], y_pred.dtype)
        return bk.xp.mean(bk.xp.abs(y_true - y_pred), axis=1, out=losses)

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        """d|y - p|/dp = sign(p - y), averaged over outputs and samples."""
        return self._error_gradient(dvalues, y_true, 1.0, sign=True)
