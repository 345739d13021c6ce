"""Plots, with matplotlib from the ``plot`` extra: training curves and decision boundaries."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from .files import write_atomic


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "gpunn[plot]"') from None
    matplotlib.use("Agg")  # files only; no window
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """``fig`` as a PNG at ``path``, written atomically; the figure is closed."""
    png = io.BytesIO()
    try:
        fig.savefig(png, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
    write_atomic(path, png.getvalue())


def history_curves(history: Any, path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch, train and (when present) validation, side by side."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = history.epoch
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, history.history[key], label="train")
        if f"val_{key}" in history.history:
            ax.plot(epochs, history.history[f"val_{key}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    fig.tight_layout()
    save_figure(fig, path)


def decision_boundary(model: Any, X: Any, y: Any, path: str | os.PathLike,
                      resolution: int = 300) -> None:
    """The class the model predicts over the plane of 2-D data, with the samples on top."""
    X, y = np.asarray(X, dtype=float), np.asarray(y)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"decision_boundary needs 2-D points (n, 2); got X of shape {X.shape}")
    if y.ndim == 2:
        y = y.argmax(axis=1)
    plt = pyplot()
    pad = 0.1 * (X.max(axis=0) - X.min(axis=0) + 1e-9)
    lo, hi = X.min(axis=0) - pad, X.max(axis=0) + pad
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    out = model.predict(grid)
    classes = out.argmax(axis=1) if out.shape[1] > 1 else (out[:, 0] > 0.5).astype(int)
    from matplotlib.colors import ListedColormap

    k = int(max(classes.max(), y.max())) + 1
    colors = plt.cm.tab10(np.arange(k) % 10)  # class j gets the same colour in area and points
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.contourf(xs, ys, classes.reshape(resolution, resolution), levels=np.arange(k + 1) - 0.5,
                cmap=ListedColormap(colors), alpha=0.3)
    ax.scatter(X[:, 0], X[:, 1], c=colors[y.astype(int)], s=12, edgecolors="k", linewidths=0.3)
    ax.set_title("decision boundary")
    fig.tight_layout()
    save_figure(fig, path)
