"""Regression: fit sin(2 pi x) with a small network and mean squared error (the book's
chapter 17), then report the mean absolute error on fresh points.

    python examples/regression.py
"""

from __future__ import annotations

import numpy as np

import gpunn as nn


def main(samples: int = 1000, epochs: int = 3000, seed: int = 0, verbose: int = 0) -> float:
    """Train and return the mean absolute error on 200 fresh points of the curve."""
    X, y = nn.datasets.sine_data(samples=samples)
    nn.set_seed(seed)
    model = nn.Sequential([nn.Dense(1, 64, init="he"), nn.ReLU(), nn.Dense(64, 64, init="he"),
                           nn.ReLU(), nn.Dense(64, 1), nn.Linear()])
    model.compile(nn.MeanSquaredError(), nn.Adam(lr=0.005, decay=1e-3), backend="auto")
    history = model.fit(X, y, epochs=epochs, batch_size=None, verbose=verbose)
    X_new = np.linspace(0, 1, 200).reshape(-1, 1)
    error = float(np.abs(model.predict(X_new) - np.sin(2 * np.pi * X_new)).mean())
    print(f"final loss {history['loss'][-1]:.5f}; mean absolute error on new points {error:.4f}")
    return error


if __name__ == "__main__":
    main(verbose=1)
