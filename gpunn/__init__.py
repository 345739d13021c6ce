"""gpunn: the dense networks of "Neural Networks from Scratch", on NumPy (CPU) or CuPy (GPU)."""

from __future__ import annotations

import logging

from . import backends, callbacks, datasets, distributed, io, metrics, plot
from .backends import use
from .callbacks import Callback, EarlyStopping, History, LambdaCallback, ModelCheckpoint
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

__version__ = "0.1.0"

__all__ = [
    "Accuracy", "Adagrad", "Adam", "BinaryCrossEntropy", "Callback", "CategoricalAccuracy",
    "CategoricalCrossEntropy", "Dense", "Dropout", "EarlyStopping", "History", "LambdaCallback",
    "Layer", "Linear", "Loss", "MeanAbsoluteError", "MeanSquaredError", "ModelCheckpoint",
    "Optimizer", "ReLU", "RMSprop", "RegressionAccuracy", "SGD", "Sequential", "Sigmoid",
    "Softmax", "SoftmaxCrossEntropy", "backends", "callbacks", "datasets", "io", "load", "metrics",
    "plot", "set_seed", "use", "distributed",
]

# A library only adds a NullHandler: what gpunn logs (which backend "auto" chose, a fast path that
# fell back) shows where the application's logging config sends it. `gpunn` on the command line
# prints it to stderr unless --quiet.
logging.getLogger("gpunn").addHandler(logging.NullHandler())
