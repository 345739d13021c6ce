"""pytest-benchmark: a streamed batch read from host memory into the uploader's buffers (what a
pinned uploader's slot gets each step of ``fit`` on data over the budget), in parts on threads
(``gather_threads`` "parts") beside one thread reading it all ("one"):

    pytest benchmarks/test_streaming.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as nn
from gpunn.training import data as data_module

#: (rows, features) of a batch: medium's, and a larger one (16 MB in float32).
BATCHES = {"medium": (1024, 784), "wide": (4096, 1024)}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("order", ["slice", "shuffled"])
@pytest.mark.parametrize("gather_threads", ["parts", "one"])
def test_streamed_rows(benchmark, monkeypatch, batch, order, gather_threads):
    rows, features = BATCHES[batch]
    if gather_threads == "one":
        monkeypatch.setattr(data_module, "GATHER_THREADS", 1)
    model = nn.Sequential([nn.Dense(features, 10)]).compile(
        nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4 * rows, features)).astype(np.float32)
    streamed = data_module.Streamed(model.network, X, rng.integers(0, 10, 4 * rows))
    index = slice(rows, 2 * rows) if order == "slice" else rng.permutation(4 * rows)[:rows]
    out = [np.empty((rows, features), np.float32), np.empty(rows, np.int64)]
    benchmark.group = f"streamed rows {batch} {order}"
    benchmark.extra_info.update(gather_threads=data_module.GATHER_THREADS)
    benchmark(streamed.rows, index, out)
    np.testing.assert_array_equal(out[0], X[index])
