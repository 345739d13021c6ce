"""plot.py: training curves and decision boundaries, as PNG files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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


def test_plotting_touches_no_global_matplotlib_state(tmp_path):
    """A library draws with Figure objects: the application's backend and pyplot's open figures
    stay as they were, and without a path the figure comes back (a notebook shows it)."""
    code = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        import gpunn as nn
        X, y = nn.datasets.spiral_data(samples=10, classes=3, seed=0)
        model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy")
        history = model.fit(X, y, epochs=3, verbose=0)
        history.plot({str(tmp_path / 'c.png')!r})
        fig = history.plot()
        boundary = nn.plot.decision_boundary(model, X, y, resolution=20)
        print(matplotlib.get_backend(), len(plt.get_fignums()), type(fig).__name__,
              type(boundary).__name__, [ax.get_title() for ax in fig.axes])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().split(maxsplit=4) == ["svg", "0", "Figure", "Figure", "['loss', 'accuracy']"], \
        out.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG


def test_a_regression_history_plots_its_loss_alone():
    X, y = nn.datasets.sine_data(samples=50)
    model = nn.Sequential([nn.Dense(1, 8), nn.ReLU(), nn.Dense(8, 1)])
    model.compile(nn.MeanSquaredError(), nn.Adam(), backend="numpy")
    fig = model.fit(X, y, epochs=2, verbose=0, validation_split=0.2).plot()
    assert [ax.get_title() for ax in fig.axes] == ["loss"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train", "validation"]
