"""plot.py: training curves and decision boundaries, as PNG files."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as nn

PNG = b"\x89PNG\r\n\x1a\n"


def test_history_and_decision_boundary_plots_are_png(tmp_path):
    X, y = nn.datasets.spiral_data(samples=30, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 16), nn.ReLU(), nn.Dense(16, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend="numpy")
    history = model.fit(X, y, epochs=20, verbose=0, validation_data=(X, y))
    history.plot(tmp_path / "curves.png")
    nn.plot.decision_boundary(model, X, y, tmp_path / "boundary.png", resolution=50)
    for name in ("curves.png", "boundary.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="needs 2-D points"):
        nn.plot.decision_boundary(model, np.ones((3, 3)), y[:3], tmp_path / "x.png")
