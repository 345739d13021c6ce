"""gpunn: the dense networks of "Neural Networks from Scratch", on NumPy (CPU) or CuPy (GPU)."""

from __future__ import annotations

import logging

from . import backends, datasets, io, metrics, plot
from .backends import use
from .layers import Dense, Dropout, Layer, Linear, ReLU, Sigmoid, Softmax, set_seed
from .losses import (
    BinaryCrossEntropy,
    CategoricalCrossEntropy,
    Loss,
    MeanAbsoluteError,
    MeanSquaredError,
    SoftmaxCrossEntropy,
)
from .metrics import Accuracy, CategoricalAccuracy, RegressionAccuracy
from .model import Sequential, load
from .optimizers import SGD, Adagrad, Adam, Optimizer, RMSprop
from .training.callbacks import History

__version__ = "0.1.0"

__all__ = [
    "Accuracy", "Adagrad", "Adam", "BinaryCrossEntropy", "CategoricalAccuracy",
    "CategoricalCrossEntropy", "Dense", "Dropout", "History", "Layer", "Linear", "Loss",
    "MeanAbsoluteError", "MeanSquaredError", "Optimizer", "ReLU", "RMSprop", "RegressionAccuracy",
    "SGD", "Sequential", "Sigmoid", "Softmax", "SoftmaxCrossEntropy", "backends", "datasets", "io",
    "load", "metrics", "plot", "set_seed", "use",
]

# One line says which backend "auto" chose. It goes to stderr unless the application has set up
# logging for "gpunn" itself (then its handlers decide).
_log = logging.getLogger("gpunn")
if not _log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False
