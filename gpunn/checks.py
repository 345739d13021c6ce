"""Input checks. Every message names the argument, what was expected and what came; checks run
before a model is touched, so bad input leaves it as it was."""

from __future__ import annotations

import math
import numbers
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


def features(X: Any, name: str = "X", n_features: int | None = None,
             dtype: Any = None) -> np.ndarray:
    """X as a 2-D array of finite real numbers with ``n_features`` columns (in ``dtype``, and
    finite there too, when one is given)."""
    arr = features_shape(X, name, n_features)
    return finite_in(arr, dtype, name)


def features_shape(X: Any, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """X as a host array (no copy of a NumPy array or memmap) whose dtype, shape and width are
    right; its values are not read (``finite_in`` does that, a part at a time if need be). An
    object whose rows are read on demand (``rows_on_demand``: ``datasets.NpyParts``) stays as it
    is: its slices are read as they are needed."""
    arr = X if getattr(X, "rows_on_demand", False) else host_array(X)
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
    return arr


def finite_in(arr: np.ndarray, dtype: Any, name: str, first_row: int = 0) -> np.ndarray:
    """``arr`` in ``dtype`` (as it is when None), C-contiguous, every value finite there: a value
    finite in float64 can overflow float32 (1e39), and is named as data, not as a training
    problem. C order because the device kernels read whole rows (``DataFrame.to_numpy()`` gives
    Fortran order), and this is where data enters. ``first_row``: where ``arr`` starts in the
    data, for the messages (data checked a part at a time)."""
    cast = np.ascontiguousarray(arr if dtype is None else _cast(arr, dtype))
    if np.issubdtype(cast.dtype, np.floating):
        bad = ~np.isfinite(cast)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            value = arr[where]
            at = f"row {where[0] + first_row}" + (f", column {where[1]}" if len(where) > 1 else "")
            if np.isfinite(value):
                raise ValueError(f"{name} holds {value!s} at {at}, beyond the range of "
                                 f"{np.dtype(dtype).name} (the model's dtype): scale the data")
            raise ValueError(f"{name} must be finite; got {value} at {at}")
    return cast


def _cast(arr: np.ndarray, dtype: Any) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(dtype, copy=False)


def class_labels(y: Any, n_samples: int, n_classes: int, name: str = "y") -> np.ndarray:
    """Integer class indices in [0, n_classes), from indices (shape (n,) or (n, 1)) or one-hot
    rows."""
    arr = host_array(y)
    if arr.ndim == 2 and arr.shape == (n_samples, 1) and n_classes > 1:  # a column of labels
        arr = arr[:, 0]
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


def class_count(y: Any, name: str = "y") -> int:
    """How many classes whole-number labels ``y`` (1-D, >= 0) name: the largest + 1."""
    arr = host_array(y)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class labels; got shape {arr.shape}")
    labels = class_labels(arr, arr.size, np.iinfo(np.int64).max, name)
    return int(labels.max()) + 1


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


def shown(value: Any) -> str:
    """``value`` as a message quotes it: numbers plainly (NumPy ones too), the rest by repr."""
    if isinstance(value, (numbers.Number, np.generic)) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    return repr(value)


def whole_number(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    """A whole number (Python or NumPy, not bool) in [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number >= {minimum}; got {shown(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}")
    return int(value)


def real_number(value: Any, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = True) -> float:
    """A finite real number (Python or NumPy, not bool) within the bounds, as a float."""
    if low is not None and high is not None:
        span = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        span = f"{'>' if low_open else '>='} {low}"
    else:
        span = "" if high is None else f"{'<' if high_open else '<='} {high}"
    wanted = f"{name} must be a finite number {span}".rstrip()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{wanted}; got {shown(value)}")
    number = float(value)
    inside = math.isfinite(number) \
        and (low is None or (number > low if low_open else number >= low)) \
        and (high is None or (number < high if high_open else number <= high))
    if not inside:
        raise ValueError(f"{wanted}; got {shown(value)}")
    return number
