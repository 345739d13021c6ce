"""Real data readers, the split, plots, and the train/predict command line."""

from __future__ import annotations

import gzip
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunn as nn
from gpunn import cli

PNG = b"\x89PNG\r\n\x1a\n"
README = Path(__file__).resolve().parent.parent / "README.md"


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> Path:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    data = header + array.astype(big_endian).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


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
    with pytest.raises(ValueError, match="test_size must be a fraction"):
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


def test_cli_train_npz_with_save_plot_checkpoint_resume_then_predict(tmp_path, capsys):
    X, y = nn.datasets.vertical_data(samples=60, classes=3, seed=0)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    args = ["train", "--dataset", str(tmp_path / "data.npz"), "--hidden", "16", "--epochs", "6",
            "--backend", "numpy", "--quiet", "--save", str(tmp_path / "m.safetensors"),
            "--plot", str(tmp_path / "c.png"), "--checkpoint", str(tmp_path / "ck.safetensors")]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("test accuracy ")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    assert nn.load(tmp_path / "ck.safetensors").optimizer.iterations == 6 * 5  # 144 rows / 32
    # --resume with more epochs continues from the checkpoint
    assert cli.main(args[:6] + ["9"] + args[7:] + ["--resume"]) == 0
    capsys.readouterr()
    assert nn.load(tmp_path / "ck.safetensors").optimizer.iterations == 9 * 5
    assert cli.main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "data.npz"),
                     "--output", str(tmp_path / "p.npz"), "--backend", "numpy"]) == 0
    assert "accuracy" in capsys.readouterr().err
    with np.load(tmp_path / "p.npz") as f:
        assert f["predictions"].shape == (180,) and f["outputs"].shape == (180, 3)
    assert cli.main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "data.npz"),
                     "--backend", "numpy"]) == 0
    assert len(capsys.readouterr().out.split()) == 180
    assert cli.main(["predict", str(tmp_path / "nope.safetensors"), str(tmp_path / "data.npz")]) == 2
    assert "no such model file" in capsys.readouterr().err
