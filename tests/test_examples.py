"""Every script in examples/ runs, on small data, to a result that shows it learned (each
assertion fails on a network that does not train)."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_has_a_test():
    tested = {"regression", "binary_dropout_l2", "mnist_idx", "gpu", "distributed"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_regression():
    assert example("regression").main(samples=200, epochs=800) < 0.1


def test_binary_classification_with_dropout_l2_and_early_stopping():
    assert example("binary_dropout_l2").main(samples=200, epochs=1000) > 0.75


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_mnist_from_idx_files(tmp_path):
    """Stand-in MNIST files: 28x28 images whose class is which quarter is bright."""
    rng = np.random.default_rng(0)

    def images(n):
        labels = rng.integers(0, 4, n)
        pixels = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 2)
            pixels[i, 14 * r:14 * r + 14, 14 * c:14 * c + 14] += 150
        return pixels, labels

    for prefix, n in (("train", 400), ("t10k", 100)):
        pixels, labels = images(n)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", pixels)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    mnist = example("mnist_idx")
    accuracy = mnist.main(tmp_path, epochs=3, hidden=(32, 16), best=tmp_path / "best.safetensors",
                          verbose=0)
    assert accuracy > 0.9
    with pytest.raises(FileNotFoundError, match="has no train-images-idx3-ubyte"):
        mnist.main(tmp_path / "nowhere")


def test_the_gpu_example_runs_where_there_is_none(tmp_path):
    pytest.importorskip("sklearn")
    assert example("gpu").main(epochs=3, path=str(tmp_path / "digits.safetensors"), verbose=0) > 0.8


def test_the_several_process_example_on_two_ranks(tmp_path):
    from support.ranks import run_ranks

    out = tmp_path / "spiral.safetensors"
    code = f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("d", {str(EXAMPLES / "distributed.py")!r})
        d = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(d)
        d.main(samples=60, epochs=60, batch_size=32, path={str(out)!r})
    """
    done = run_ranks(2, code, tmp_path)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("2 rank(s): accuracy ") and float(line.split()[3].rstrip(";")) > 0.6
    assert out.exists()
