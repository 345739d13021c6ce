"""Data: toy sets with the nnfs package's definitions (the cs231n spiral and friends), and
readers for real data (scikit-learn's digits, MNIST-format IDX files, your own .npz).

With ``seed=0`` the numbers equal nnfs's after ``nnfs.init()`` (which seeds NumPy's global
generator with 0), because the same legacy generator draws them in the same order; ``rng=np.random``
draws from NumPy's global generator itself, as nnfs does (gpunn.book's data functions).
"""

from __future__ import annotations

import glob
import gzip
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .checks import real_number, whole_number


def _rng(seed: int | None, rng: Any = None) -> Any:
    if rng is not None:
        return rng
    if seed is not None:
        whole_number(seed, "seed", 0)
    return np.random.RandomState(seed)


def _blank(samples: int, classes: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Checked sizes, and zeroed X (n, 2) and y (n,) as nnfs allocates them (uint8 labels, wider
    ones past 256 classes)."""
    samples = whole_number(samples, "samples", 1)
    classes = whole_number(classes, "classes", 1)
    labels = "uint8" if classes <= 256 else "int64"
    return samples, classes, np.zeros((samples * classes, 2)), np.zeros(samples * classes, dtype=labels)


def spiral_data(samples: int = 100, classes: int = 3, seed: int | None = None,
                rng: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` interleaved spiral arms of ``samples`` points each: X (n, 2), y (n,). The
    noise comes from ``rng`` (anything with ``randn``, e.g. ``np.random``) or a generator
    seeded with ``seed``."""
    samples, classes, X, y = _blank(samples, classes)
    rng = _rng(seed, rng)
    for class_number in range(classes):
        ix = range(samples * class_number, samples * (class_number + 1))
        r = np.linspace(0.0, 1, samples)  # radius
        t = np.linspace(class_number * 4, (class_number + 1) * 4, samples) \
            + rng.randn(samples) * 0.2  # angle, with noise
        X[ix] = np.c_[r * np.sin(t * 2.5), r * np.cos(t * 2.5)]
        y[ix] = class_number
    return X, y


def vertical_data(samples: int = 100, classes: int = 3, seed: int | None = None,
                  rng: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` vertical Gaussian blobs side by side: X (n, 2), y (n,) (``rng`` and ``seed``
    as for ``spiral_data``)."""
    samples, classes, X, y = _blank(samples, classes)
    rng = _rng(seed, rng)
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


# ---- real data ------------------------------------------------------------------------------

def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits: X (1797, 64) scaled to [0, 1], y (1797,)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError('load_digits needs scikit-learn, from the data extra: '
                          'pip install "gpunn[data]"') from None
    digits = sklearn_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (the MNIST format), raw or gzip-compressed, with its header checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path} is not a valid IDX file: broken gzip data ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise ValueError(f"{path} is not a valid IDX file: bad magic number {data[:4].hex() or '(empty)'}")
    dims = data[3]
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"{path} is not a valid IDX file: the header is cut short")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(data) != expected:
        raise ValueError(f"{path} is not a valid IDX file: the header announces shape {shape} "
                         f"({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def load_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike
             ) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-format images and labels (raw or .gz): X (n, rows * cols) in [0, 1], y (n,)."""
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim < 2:
        raise ValueError(f"{images_path}: images need at least 2 dimensions; got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: labels must be 1-D; got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                         f"{len(labels)} labels")
    X = images.reshape(len(images), -1).astype(np.float32)
    if images.dtype == np.uint8:
        X /= 255.0
    return X, labels.astype(np.int64)


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Your own data: an .npz file with arrays ``X`` (samples, features) and ``y``."""
    arrays = read_npz(path)
    missing = {"X", "y"} - set(arrays)
    if missing:
        raise ValueError(f"{path} must hold arrays named X and y; it lacks "
                         f"{', '.join(sorted(missing))} (it has {', '.join(arrays) or 'none'})")
    return arrays["X"], arrays["y"]


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickled objects); ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            raise ValueError("it holds a single array (.npy), not named arrays")
        with data as f:
            return {name: f[name] for name in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path} is not a valid .npz file ({exc})") from None


class NpyParts:
    """The rows of several ``.npy`` files, one file after another, as one array that reads only
    the rows it is asked for: data too big for one file, or for memory. Each file is opened with
    ``np.load(mmap_mode=...)`` ("r" by default); all must have the same trailing shape and dtype.
    ``paths``: a list of files, or a glob pattern ("part-*.npy"), taken in sorted order.

    ``fit``, ``evaluate`` and ``predict`` take it as X (and as y): data over the device's budget
    is streamed from it a batch at a time (checked a part at a time first), smaller data is read
    whole onto the device. Indexing follows NumPy's for what those need: ``parts[i]`` is a row,
    ``parts[a:b]`` another NpyParts over those rows (nothing read), ``parts[indices]`` (an integer
    array, such as part of a shuffle) the rows as an array, ``parts[i, j]`` an element,
    ``np.asarray(parts)`` all of them.
    """

    #: For gpunn's checks: rows are read on demand (``checks.features_shape`` keeps it as it is).
    rows_on_demand = True

    def __init__(self, paths: Any, mmap_mode: str = "r", *, _parts: Any = None,
                 _span: tuple[int, int] | None = None) -> None:
        if _parts is None:
            if isinstance(paths, (str, os.PathLike)):  # a glob pattern, files in sorted order
                pattern = os.fspath(paths)
                paths = sorted(glob.glob(pattern))
                if not paths:
                    raise FileNotFoundError(f"no file matches {pattern!r}")
            paths = list(paths)
            if not paths:
                raise ValueError("NpyParts needs at least one .npy file; got none")
            _parts = [self._open(Path(p), mmap_mode) for p in paths]
            first = _parts[0]
            for path, part in zip(paths[1:], _parts[1:]):
                if part.shape[1:] != first.shape[1:] or part.dtype != first.dtype:
                    raise ValueError(f"{path} holds rows of shape {part.shape[1:]} and dtype "
                                     f"{part.dtype}; {paths[0]} holds {first.shape[1:]}, "
                                     f"{first.dtype}: the parts must agree")
        self._parts = _parts
        self._starts = np.cumsum([0] + [len(part) for part in _parts])
        self._lo, self._hi = _span if _span is not None else (0, int(self._starts[-1]))
        self.dtype = _parts[0].dtype
        self.shape = (self._hi - self._lo,) + _parts[0].shape[1:]
        self.ndim = len(self.shape)

    @staticmethod
    def _open(path: Path, mmap_mode: str) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"no such .npy file: {path}")
        try:
            part = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path} is not a valid .npy file ({exc})") from None
        if not isinstance(part, np.ndarray) or part.ndim == 0:
            raise ValueError(f"{path} must hold one array of rows (.npy); got "
                             f"{type(part).__name__} {getattr(part, 'shape', '')}")
        return part

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"NpyParts({len(self._parts)} files, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, tuple):  # rows first, then within them (parts[i, j])
            rows = self[index[0]] if index else self
            rows = np.asarray(rows)
            return rows[index[1:]] if rows.ndim < self.ndim else rows[(slice(None), *index[1:])]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            stop = max(start, stop)
            return NpyParts(None, _parts=self._parts, _span=(self._lo + start, self._lo + stop))
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {index} is out of range for {len(self)} rows")
            return self[np.array([i])][0]
        rows = np.asarray(index)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError(f"NpyParts takes an int, a slice or a 1-D integer array; got {index!r:.60}")
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)}); got {rows.min()}..{rows.max()}")
        rows = rows + self._lo
        out = np.empty((rows.size,) + self.shape[1:], self.dtype)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for p in np.unique(which):  # each file read once, at the rows it holds
            here = which == p
            out[here] = self._parts[p][rows[here] - self._starts[p]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        pieces = []
        for p, part in enumerate(self._parts):
            lo = max(self._lo, self._starts[p]) - self._starts[p]
            hi = min(self._hi, self._starts[p + 1]) - self._starts[p]
            if hi > lo:
                pieces.append(part[lo:hi])
        whole = np.concatenate(pieces) if pieces else np.empty(self.shape, self.dtype)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        """All the rows, read, in ``dtype``."""
        return np.asarray(self, dtype=dtype)


def train_test_split(X: Any, y: Any, test_size: float = 0.2, seed: int | None = None,
                     stratify: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and split into X_train, X_test, y_train, y_test. ``stratify=True`` keeps each
    class's share the same in both parts (y must then be class labels)."""
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0 or len(X) != len(y):
        raise ValueError(f"X and y must hold as many samples; got shapes {X.shape} and {y.shape}")
    if len(X) < 2:
        raise ValueError(f"X and y must hold at least 2 samples to split; got {len(X)}")
    test_size = real_number(test_size, "test_size", 0, 1, low_open=True)
    rng = np.random.default_rng(seed)
    if stratify:
        labels = y.argmax(axis=1) if y.ndim == 2 else y
        test = []
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            test.append(members[:int(round(test_size * len(members)))])
        test_idx = np.sort(np.concatenate(test))
    else:
        test_idx = np.sort(rng.permutation(len(X))[:int(round(test_size * len(X)))])
    if len(test_idx) == 0 or len(test_idx) == len(X):
        raise ValueError(f"test_size={test_size} leaves one part empty with {len(X)} samples")
    train_mask = np.ones(len(X), dtype=bool)
    train_mask[test_idx] = False
    train_idx = rng.permutation(np.flatnonzero(train_mask))
    return X[train_idx], X[test_idx], y[train_idx], y[test_idx]
