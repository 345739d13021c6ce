"""datasets.py: the nnfs toy sets, real data readers (IDX, .npz, scikit-learn's digits) and the
split."""

from __future__ import annotations

import gzip
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunn as nn

README = Path(__file__).resolve().parent.parent / "README.md"


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> Path:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    data = header + array.astype(big_endian).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_spiral_data_shapes_and_seed():
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    assert X.shape == (300, 2) and y.shape == (300,)
    assert np.bincount(y).tolist() == [100, 100, 100]
    X2, _ = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    assert np.array_equal(X, X2)
    assert not np.array_equal(X, nn.datasets.spiral_data(samples=100, classes=3, seed=1)[0])
    # the cs231n spiral: radius grows linearly from 0 to 1 along each arm
    np.testing.assert_allclose(np.hypot(X[:100, 0], X[:100, 1]), np.linspace(0, 1, 100))


def test_spiral_matches_the_nnfs_recipe_with_the_legacy_generator():
    """nnfs.init() seeds NumPy's global generator with 0; seed=0 reproduces its draws."""
    X, _ = nn.datasets.spiral_data(samples=5, classes=2, seed=0)
    rng = np.random.RandomState(0)
    t0 = np.linspace(0, 4, 5) + rng.randn(5) * 0.2
    r = np.linspace(0, 1, 5)
    np.testing.assert_allclose(X[:5], np.c_[r * np.sin(t0 * 2.5), r * np.cos(t0 * 2.5)])


def test_vertical_and_sine_data():
    X, y = nn.datasets.vertical_data(samples=50, classes=4, seed=0)
    assert X.shape == (200, 2) and set(y.tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(X[y == 2, 0].mean(), 2 / 3, atol=0.05)
    X, y = nn.datasets.sine_data(samples=10)
    assert X.shape == y.shape == (10, 1)
    np.testing.assert_allclose(y, np.sin(2 * np.pi * X))
    with pytest.raises(ValueError, match="samples must be >= 1"):
        nn.datasets.spiral_data(samples=0)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress, rng):
    images = rng.integers(0, 256, (7, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    X, y = nn.datasets.load_idx(write_idx(tmp_path / "img.idx", images, compress=compress),
                                write_idx(tmp_path / "lab.idx", labels, compress=compress))
    assert X.shape == (7, 12) and X.dtype == np.float32
    np.testing.assert_allclose(X, images.reshape(7, 12) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)


def test_bad_idx_files(tmp_path, rng):
    images = rng.integers(0, 256, (5, 2, 2), dtype=np.uint8)
    good = write_idx(tmp_path / "img.idx", images)
    labels = write_idx(tmp_path / "lab.idx", np.arange(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="holds 5 images but .* holds 4 labels"):
        nn.datasets.load_idx(good, labels)
    cut = tmp_path / "cut.idx"
    cut.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"not a valid IDX file: the header announces shape \(5, 2, 2\)"):
        nn.datasets.load_idx(cut, labels)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="bad magic number"):
        nn.datasets.load_idx(bad, labels)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(good.read_bytes())[:20])
    with pytest.raises(ValueError, match="broken gzip data"):
        nn.datasets.load_idx(broken_gz, labels)
    with pytest.raises(FileNotFoundError, match="no such IDX file"):
        nn.datasets.load_idx(tmp_path / "nope.idx", labels)


def test_load_npz(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((3, 2)), y=np.array([0, 1, 0]))
    X, y = nn.datasets.load_npz(tmp_path / "d.npz")
    assert X.shape == (3, 2) and y.tolist() == [0, 1, 0]
    np.savez(tmp_path / "e.npz", features=np.ones((3, 2)))
    with pytest.raises(ValueError, match="must hold arrays named X and y; it lacks X, y"):
        nn.datasets.load_npz(tmp_path / "e.npz")
    (tmp_path / "f.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid .npz file"):
        nn.datasets.load_npz(tmp_path / "f.npz")
    with pytest.raises(FileNotFoundError):
        nn.datasets.load_npz(tmp_path / "missing.npz")


def test_train_test_split_is_seeded_and_stratified():
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    X = np.column_stack([X, np.arange(150)])  # a row number, to check the split is a partition
    a = nn.datasets.train_test_split(X, y, test_size=0.2, seed=3, stratify=True)
    b = nn.datasets.train_test_split(X, y, test_size=0.2, seed=3, stratify=True)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    X_train, X_test, y_train, y_test = a
    assert len(X_test) == 30 and len(X_train) == 120
    assert np.bincount(y_test).tolist() == [10, 10, 10]
    rows = np.sort(np.concatenate([X_train[:, 2], X_test[:, 2]]))
    np.testing.assert_array_equal(rows, np.arange(150))  # nothing lost, nothing twice
    with pytest.raises(ValueError, match=r"test_size must be a finite number in \(0, 1\)"):
        nn.datasets.train_test_split(X, y, test_size=1.5)


def test_load_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "gpunn\[data\]"'):
        nn.datasets.load_digits()


def test_digits_figure_in_the_readme(tmp_path, monkeypatch):
    """The README's digits example, run as written there, reaches the figure it states."""
    monkeypatch.chdir(tmp_path)  # it writes its files here
    text = README.read_text()
    block = re.search(r"```python\n(# Handwritten digits.*?)```", text, re.S).group(1)
    stated = float(re.search(r"test accuracy (0\.\d+)", text).group(1))
    scope: dict = {}
    exec(compile(block, "README digits example", "exec"), scope)
    accuracy = scope["result"]["accuracy"]
    assert accuracy >= 0.97
    assert round(accuracy, 3) == stated


def test_corrupt_and_lying_idx_files_are_refused(tmp_path, rng):
    images = rng.integers(0, 256, (5, 2, 2), dtype=np.uint8)
    good = write_idx(tmp_path / "img.idx", images)
    labels = write_idx(tmp_path / "lab.idx", np.arange(5, dtype=np.uint8))
    packed = bytearray(gzip.compress(good.read_bytes() * 50))
    packed[12:20] = b"\xff" * 8  # damaged deflate data: a zlib.error, not a cut-short file
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(bytes(packed))
    with pytest.raises(ValueError, match="broken gzip data"):
        nn.datasets.load_idx(corrupt, labels)
    # Dimensions whose product wraps around 2**64 to the true size (20 bytes) do not pass:
    # 2147418113 * 2147549185 = 2**62 + 1, so 5 * 4 * that = 20 + 5 * 2**64.
    lying = tmp_path / "lying.idx"
    lying.write_bytes(bytes([0, 0, 0x08, 4]) + struct.pack(">IIII", 5, 4, 2147418113, 2147549185)
                      + images.tobytes())
    assert np.prod([5, 4, 2147418113, 2147549185], dtype=np.int64) == 20
    with pytest.raises(ValueError, match=r"announces shape \(5, 4, 2147418113, 2147549185\)"):
        nn.datasets.load_idx(lying, labels)


def test_npz_that_is_not_named_arrays(tmp_path):
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"not a valid .npz file \(it holds a single array \(.npy\)"):
        nn.datasets.load_npz(tmp_path / "single.npy")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="must hold arrays named X and y; it lacks X, y"):
        nn.datasets.load_npz(tmp_path / "empty.npz")


def test_many_classes_and_numpy_numbers():
    X, y = nn.datasets.spiral_data(1, 300, seed=0)  # labels past 255 do not wrap in uint8
    assert y.tolist() == list(range(300)) and X.shape == (300, 2)
    X, y = nn.datasets.spiral_data(20, 3, seed=0)
    X_train, X_test, _, _ = nn.datasets.train_test_split(X, y, test_size=np.float32(0.25), seed=0)
    assert (len(X_train), len(X_test)) == (45, 15)
    with pytest.raises(ValueError, match="at least 2 samples"):
        nn.datasets.train_test_split(X[:1], y[:1])
