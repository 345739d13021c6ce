"""Central differences in float64: the independent reference the analytic gradients are checked
against."""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def to_host(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)


def numerical_grad(f, x: np.ndarray) -> np.ndarray:
    """Central differences of scalar f at host array x (perturbed in place, then restored)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + EPS
        up = f()
        x[i] = keep - EPS
        down = f()
        x[i] = keep
        grad[i] = (up - down) / (2 * EPS)
    return grad


def assert_close(analytic, numeric, what):
    analytic = to_host(analytic)
    scale = max(1.0, np.abs(numeric).max())
    err = np.abs(analytic - numeric).max() / scale
    assert err < 1e-6, f"{what}: max relative error {err:.2e}"
