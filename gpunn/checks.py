"""Input checks. Every message names the argument, what was expected and what came; checks run
before a model is touched, so bad input leaves it as it was."""

from __future__ import annotations

from typing import Any

import numpy as np


def host_array(value: Any) -> np.ndarray:
    """A NumPy view of ``value`` (CuPy arrays are copied to the host, lists converted)."""
    if hasattr(value, "__cuda_array_interface__") and hasattr(value, "get"):
        value = value.get()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise TypeError(f"could not read the data as an array: {exc}") from None


def features(X: Any, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """X as a 2-D array of finite real numbers with ``n_features`` columns."""
    arr = host_array(X)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
            or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has 0 samples")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} must have {n_features} features (columns) for this model; "
                         f"got {arr.shape[1]}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"{name} must be finite; got {arr[row, col]} at row {row}, "
                             f"column {col}")
    return arr


def class_labels(y: Any, n_samples: int, n_classes: int, name: str = "y") -> np.ndarray:
    """Integer class indices in [0, n_classes), from indices or one-hot rows."""
    arr = host_array(y)
    if arr.ndim == 2:
        if arr.shape != (n_samples, n_classes):
            raise ValueError(f"{name} as one-hot rows must have shape ({n_samples}, {n_classes}); "
                             f"got {arr.shape}")
        if not np.isin(arr, (0, 1)).all() or not (arr.sum(axis=1) == 1).all():
            row = int(np.argmax(~(np.isin(arr, (0, 1)).all(axis=1) & (arr.sum(axis=1) == 1))))
            raise ValueError(f"{name} one-hot rows must hold a single 1 and zeros elsewhere; "
                             f"row {row} is {arr[row].tolist()}")
        return arr.argmax(axis=1).astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be class indices of shape ({n_samples},) or one-hot rows "
                         f"of shape ({n_samples}, {n_classes}); got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"{name} has {arr.shape[0]} labels but X has {n_samples} samples")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) \
            or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold integer class indices; got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer):
        whole = np.isfinite(arr) & (arr == np.round(arr))
        if not whole.all():
            row = int(np.argmin(whole))
            raise TypeError(f"{name} must hold integer class indices; got {arr[row]} at row {row}")
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{name} labels must be in [0, {n_classes}); got {arr[row]} at row {row}")
    return arr.astype(np.int64)


def targets(y: Any, n_samples: int, n_outputs: int, name: str = "y",
            low: float | None = None, high: float | None = None) -> np.ndarray:
    """Real-valued targets of shape (n_samples, n_outputs) ((n_samples,) when one output)."""
    arr = host_array(y)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
            or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    if arr.ndim == 1 and n_outputs == 1:
        arr = arr.reshape(-1, 1)
    if arr.shape != (n_samples, n_outputs):
        raise ValueError(f"{name} must have shape ({n_samples}, {n_outputs}) to match X and the "
                         f"model's output; got {arr.shape}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if low is not None:
        bad |= arr < low
    if high is not None:
        bad |= arr > high
    if bad.any():
        row, col = np.argwhere(bad)[0]
        want = "finite" if low is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {want}; got {arr[row, col]} at row {row}, column {col}")
    return arr


def whole_number(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)
