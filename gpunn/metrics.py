"""Accuracy, with the book's definitions and running totals: ``calculate(predictions, y)`` gives
the share of predictions that are right and adds them to the totals, ``new_pass`` clears the
totals, ``calculate_accumulated`` gives their mean. Predictions come from the last layer's
``predictions(outputs)`` (the class for Softmax, 0/1 for Sigmoid, the values for Linear).

Compiled models count accuracy their own way on the device (``Loss.count_correct``), to the same
definitions; these classes are for the book's loops and its ``Model``.
"""

from __future__ import annotations

from typing import Any

from .backends import backend_of


class Accuracy:
    """The share of right predictions, and its running totals."""

    def __init__(self) -> None:
        self.new_pass()

    def init(self, y: Any, reinit: bool = False) -> None:
        """Learn what it needs from the targets (regression: its precision)."""

    def compare(self, predictions: Any, y: Any) -> Any:
        """True where a prediction is right."""
        raise NotImplementedError

    def calculate(self, predictions: Any, y: Any) -> float:
        comparisons = self.compare(predictions, y)
        self.accumulated_sum += float(comparisons.sum())
        self.accumulated_count += comparisons.size
        return float(comparisons.mean())

    def new_pass(self) -> None:
        self.accumulated_sum, self.accumulated_count = 0.0, 0

    def calculate_accumulated(self) -> float:
        return self.accumulated_sum / self.accumulated_count


class CategoricalAccuracy(Accuracy):
    """The predicted class is the label (one-hot labels are turned into classes); with
    ``binary``, each 0/1 output against its own target."""

    def __init__(self, *, binary: bool = False) -> None:
        super().__init__()
        self.binary = binary

    def compare(self, predictions: Any, y: Any) -> Any:
        bk = backend_of(predictions, y, names=("predictions", "y"))
        y = bk.asarray(y)
        if not self.binary and y.ndim == 2:
            y = y.argmax(axis=1)
        return predictions == y


class RegressionAccuracy(Accuracy):
    """A prediction within ``precision`` of its target is right; the precision is the targets'
    standard deviation / 250, taken by ``init`` (the book's choice)."""

    def __init__(self) -> None:
        super().__init__()
        self.precision: float | None = None

    def init(self, y: Any, reinit: bool = False) -> None:
        if self.precision is None or reinit:
            self.precision = float(backend_of(y, names=("y",)).xp.std(y)) / 250

    def compare(self, predictions: Any, y: Any) -> Any:
        bk = backend_of(predictions, y, names=("predictions", "y"))
        return bk.xp.absolute(predictions - bk.asarray(y)) < self.precision
