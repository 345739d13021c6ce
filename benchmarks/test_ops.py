"""pytest-benchmark benchmarks of the hot ops. Each op (at each size) is one group, so every
available backend, and on each the fast path beside the plain xp reference of base.py, compare
side by side:

    pytest benchmarks/ --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

from gpunn.backends import schedule as slots
from gpunn.backends.base import Backend

SHAPES = {"spiral": (300, 64, 3), "medium": (1024, 1024, 1024)}  # (rows, in, out)


def _data(bk, rows, n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return {
        "x": bk.asarray(rng.standard_normal((rows, n_in)).astype(f32)),
        "w": bk.asarray(rng.standard_normal((n_in, n_out)).astype(f32)),
        "z": bk.asarray(rng.standard_normal((rows, n_out)).astype(f32)),
        "b": bk.asarray(rng.standard_normal((1, n_out)).astype(f32)),
        "labels": bk.asarray(rng.integers(0, n_out, rows)),
    }


def _run(benchmark, bk, impl, name, fn):
    benchmark.group = name
    benchmark.extra_info.update(backend=bk.name, impl=impl)

    def call():
        fn(bk if impl == "fast" else Backend(bk.xp))
        bk.synchronize()

    benchmark(call)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_gemm(benchmark, bk, shape, impl):
    d = _data(bk, *SHAPES[shape])
    out = bk.empty(d["z"].shape, np.float32)
    _run(benchmark, bk, impl, f"gemm {shape}", lambda ops: ops.gemm(d["x"], d["w"], out=out))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_take_rows(benchmark, bk, shape, impl):
    """A shuffled batch gathered from data of 8 batches (fit's shuffled steps)."""
    rows, n_in, _ = SHAPES[shape]
    data = bk.asarray(np.random.default_rng(0).standard_normal((8 * rows, n_in)).astype(np.float32))
    order = bk.asarray(np.random.default_rng(1).permutation(8 * rows)[:rows])
    out = bk.empty((rows, n_in), np.float32)
    _run(benchmark, bk, impl, f"take_rows {shape}", lambda ops: ops.take_rows(data, order, out=out))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_bias_relu(benchmark, bk, shape, impl):
    d = _data(bk, *SHAPES[shape])
    _run(benchmark, bk, impl, f"bias_relu {shape}", lambda ops: ops.bias_relu(d["z"], d["b"]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_relu_backward(benchmark, bk, shape, impl):
    d = _data(bk, *SHAPES[shape])
    out = bk.empty(d["z"].shape, np.float32)
    _run(benchmark, bk, impl, f"relu_backward {shape}",
         lambda ops: ops.relu_backward(d["z"], d["z"], out=out))


@pytest.mark.parametrize("classes", [3, 10, 1000])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_softmax_cross_entropy(benchmark, bk, classes, impl):
    d = _data(bk, 1024, 8, classes)
    probs, dlogits = bk.empty(d["z"].shape, np.float32), bk.empty(d["z"].shape, np.float32)
    losses = bk.empty((1024,), np.float32)
    _run(benchmark, bk, impl, f"softmax_cross_entropy 1024x{classes}",
         lambda ops: ops.softmax_cross_entropy(d["z"], d["labels"], probs, dlogits, losses))


@pytest.mark.parametrize("rule", ["sgd", "sgd-momentum", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_optimizer_update(benchmark, bk, rule, impl):
    size = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10  # the medium network
    rng = np.random.default_rng(0)
    p, g = (bk.asarray(rng.standard_normal(size).astype(np.float32)) for _ in range(2))
    m, c = (bk.asarray(np.abs(rng.standard_normal(size)).astype(np.float32)) for _ in range(2))
    scratch = bk.empty((size,), np.float32)
    values = slots.start(4, 1e-3, 0.0, 0.9, 0.999)
    slots.advance(values)  # the schedule as step 5 reads it
    schedule = bk.asarray(np.array(values))
    calls = {
        "sgd": lambda ops: ops.sgd_update(p, g, None, schedule, 0.0, scratch),
        "sgd-momentum": lambda ops: ops.sgd_update(p, g, m, schedule, 0.9, scratch),
        "adagrad": lambda ops: ops.adagrad_update(p, g, c, schedule, 1e-7, scratch),
        "rmsprop": lambda ops: ops.rmsprop_update(p, g, c, schedule, 1e-7, 0.9, scratch),
        "adam": lambda ops: ops.adam_update(p, g, m, c, schedule, 1e-7, 0.9, 0.999, scratch),
    }
    _run(benchmark, bk, impl, f"update {rule} (1.86M parameters)", calls[rule])


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_book_epochs(benchmark, impl):
    """64 full-batch epochs of the book's network (one launch): the CPU one-kernel trainer
    (numba) beside the NumPy steps it stands in for."""
    import gpunn as nn
    from gpunn.backends import jit

    if impl == "fast" and jit.why_not() is not None:
        pytest.skip(jit.why_not())
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05, decay=5e-7), backend="numpy")
    model.backend.one_kernel_trainer = impl == "fast"
    benchmark.group = "book 64 epochs"
    benchmark.extra_info.update(backend="numpy", impl=impl)
    benchmark(lambda: model.fit(X, y, epochs=64, batch_size=None, verbose=0))
