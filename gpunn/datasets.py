"""Toy data sets with the nnfs package's definitions (the cs231n spiral and friends).

With ``seed=0`` the numbers equal nnfs's after ``nnfs.init()`` (which seeds NumPy's global
generator with 0), because the same legacy generator draws them in the same order.
"""

from __future__ import annotations

import numpy as np

from ._checks import whole_number


def _rng(seed: int | None) -> np.random.RandomState:
    if seed is not None:
        whole_number(seed, "seed", 0)
    return np.random.RandomState(seed)


def spiral_data(samples: int = 100, classes: int = 3, seed: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` interleaved spiral arms of ``samples`` points each: X (n, 2), y (n,)."""
    samples = whole_number(samples, "samples", 1)
    classes = whole_number(classes, "classes", 1)
    rng = _rng(seed)
    X = np.zeros((samples * classes, 2))
    y = np.zeros(samples * classes, dtype="uint8")
    for class_number in range(classes):
        ix = range(samples * class_number, samples * (class_number + 1))
        r = np.linspace(0.0, 1, samples)  # radius
        t = np.linspace(class_number * 4, (class_number + 1) * 4, samples) \
            + rng.randn(samples) * 0.2  # angle, with noise
        X[ix] = np.c_[r * np.sin(t * 2.5), r * np.cos(t * 2.5)]
        y[ix] = class_number
    return X, y


def vertical_data(samples: int = 100, classes: int = 3, seed: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` vertical Gaussian blobs side by side: X (n, 2), y (n,)."""
    samples = whole_number(samples, "samples", 1)
    classes = whole_number(classes, "classes", 1)
    rng = _rng(seed)
    X = np.zeros((samples * classes, 2))
    y = np.zeros(samples * classes, dtype="uint8")
    for class_number in range(classes):
        ix = range(samples * class_number, samples * (class_number + 1))
        X[ix] = np.c_[rng.randn(samples) * 0.1 + class_number / 3,
                      rng.randn(samples) * 0.1 + 0.5]
        y[ix] = class_number
    return X, y


def sine_data(samples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """One period of sin(2 pi x) on [0, 1): X (n, 1), y (n, 1), for regression."""
    samples = whole_number(samples, "samples", 1)
    X = np.arange(samples).reshape(-1, 1) / samples
    y = np.sin(2 * np.pi * X).reshape(-1, 1)
    return X, y
