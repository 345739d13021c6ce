"""Plots, with matplotlib from the ``plot`` extra: training curves and decision boundaries.

Figures are made with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot, so
plotting changes no global state: the application's backend, open figures and style stay as they
were. Given a path, a function writes a PNG atomically; without one it returns the figure (a
notebook shows it)."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from .files import write_atomic


def figure(**kwargs: Any) -> Any:
    """A new matplotlib Figure (no pyplot, no global backend); ImportError naming the extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "gpunn[plot]"') from None
    return Figure(**kwargs)


def require_matplotlib() -> None:
    """Raise the ImportError ``figure`` would, now (before work whose end is a plot)."""
    figure()


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """``fig`` as a PNG at ``path``, written atomically."""
    png = io.BytesIO()
    fig.savefig(png, dpi=dpi, format="png")
    write_atomic(path, png.getvalue())


def _done(fig: Any, path: str | os.PathLike | None) -> Any:
    fig.tight_layout()
    if path is None:
        return fig
    save_figure(fig, path)
    return None


def history_curves(history: Any, path: str | os.PathLike | None = None) -> Any:
    """Loss (and accuracy, when recorded) per epoch, train and validation side by side."""
    keys = [key for key in ("loss", "accuracy") if key in history.history]
    fig = figure(figsize=(5 * len(keys), 4))
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        ax.plot(history.epoch, history.history[key], label="train")
        if f"val_{key}" in history.history:
            ax.plot(history.epoch, history.history[f"val_{key}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    return _done(fig, path)


def decision_boundary(model: Any, X: Any, y: Any, path: str | os.PathLike | None = None,
                      resolution: int = 300) -> Any:
    """The class the model predicts over the plane of 2-D data, with the samples on top."""
    X, y = np.asarray(X, dtype=float), np.asarray(y)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"decision_boundary needs 2-D points (n, 2); got X of shape {X.shape}")
    if y.ndim == 2:
        y = y.argmax(axis=1) if y.shape[1] > 1 else y[:, 0]
    fig = figure(figsize=(6, 6))
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    pad = 0.1 * (X.max(axis=0) - X.min(axis=0) + 1e-9)
    lo, hi = X.min(axis=0) - pad, X.max(axis=0) + pad
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    out = model.predict(grid)
    classes = out.argmax(axis=1) if out.shape[1] > 1 else (out[:, 0] > 0.5).astype(int)
    k = int(max(classes.max(), y.max())) + 1
    colors = colormaps["tab10"](np.arange(k) % 10)  # class j: one colour in area and points
    ax = fig.subplots()
    ax.contourf(xs, ys, classes.reshape(resolution, resolution), levels=np.arange(k + 1) - 0.5,
                cmap=ListedColormap(colors), alpha=0.3)
    ax.scatter(X[:, 0], X[:, 1], c=colors[y.astype(int)], s=12, edgecolors="k", linewidths=0.3)
    ax.set_title("decision boundary")
    return _done(fig, path)
