"""pytest-benchmark: a streamed batch read from host memory into the uploader's buffers (what a
pinned uploader's slot gets each step of ``fit`` on data over the budget), in parts on threads
(``gather_threads`` "parts") beside one thread reading it all ("one"); and the host's part of a
streamed epoch, small batches sent together or one at a time:

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


class NoDevice:
    """A runtime for the pinned uploader that does nothing for a device: streams, events and
    (unless ``copies``) copies cost nothing, "device" buffers are the host's, so what is timed
    is the host's part."""

    copies = False

    class Nothing:
        def wait_event(self, event):
            pass

        def record(self, stream):
            pass

        def synchronize(self):
            pass

    def stream(self):
        return self.Nothing()

    event = current_stream = stream

    def pinned(self, shape, dtype):
        return np.empty(shape, dtype)

    def device(self, shape, dtype):
        return np.empty(shape, dtype)

    def copy(self, device, host, stream):
        if self.copies:
            device[...] = host


#: (rows, features, batches) of a streamed epoch: small batches, which go together up to
#: transfer.GROUP_BYTES (218 and 5 to a start).
EPOCHS = {"300x2": (300, 2, 400), "64x784": (64, 784, 40)}


@pytest.mark.parametrize("epoch", EPOCHS)
@pytest.mark.parametrize("per_start", ["grouped", "one"])
def test_streamed_epoch_host_work(benchmark, monkeypatch, epoch, per_start):
    """A shuffled epoch through Streamed.feed and the CuPy backend's pinned uploader, the
    device's part left out: consecutive batches sent together ("grouped", the default) or one
    at a time ("one"). The rows each step is handed are checked against the shuffle."""
    from gpunn.backends.cuda import transfer
    from gpunn.backends.cupy_backend import CupyBackend
    from gpunn.training.batches import Batch

    rows, features, count = EPOCHS[epoch]
    runtime = NoDevice()
    monkeypatch.setattr(transfer, "CupyRuntime", lambda xp: runtime)
    if per_start == "one":
        monkeypatch.setattr(transfer, "GROUP_BYTES", 0)
    model = nn.Sequential([nn.Dense(features, 10)]).compile(
        nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy")
    bk = model.backend
    monkeypatch.setattr(bk, "uploader", lambda *shapes: CupyBackend.uploader(bk, *shapes),
                        raising=False)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows * count, features)).astype(np.float32)
    streamed = data_module.Streamed(model.network, X, rng.integers(0, 10, rows * count))
    order = rng.permutation(rows * count)
    batches = [Batch(i * rows, (i + 1) * rows, order) for i in range(count)]
    got = []

    def epoch_through():
        got.clear()
        for batch, (x, _, a, b, _) in streamed.feed(batches):
            assert batch.rows == b - a
            if runtime.copies:
                got.append(x[a:b].copy())

    benchmark.group = f"streamed epoch host work {epoch}"
    benchmark(epoch_through)
    runtime.copies = True  # once more, with the rows reaching the "device" buffers to check
    epoch_through()
    assert len(got) == count
    for i, x in enumerate(got):
        np.testing.assert_array_equal(x, X[order[i * rows:(i + 1) * rows]])
