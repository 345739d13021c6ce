"""The pinned, double-buffered uploader (gpunn/backends/cuda/transfer.py), on the CPU: a stand-in
runtime copies at once and records every CUDA call, so the order of the waits that keep a buffer
from being overwritten while it is read is checked without a device."""

from __future__ import annotations

import numpy as np

import gpunn as nn
from gpunn.backends import get_backend
from gpunn.backends.cuda.transfer import PinnedUploader


class Stream:
    def __init__(self, runtime, name):
        self.runtime, self.name = runtime, name

    def wait_event(self, event):
        self.runtime.log.append(("wait", self.name, event.name))


class Event:
    def __init__(self, runtime, name):
        self.runtime, self.name = runtime, name

    def record(self, stream):
        self.runtime.log.append(("record", self.name, stream.name))

    def synchronize(self):
        self.runtime.log.append(("sync", self.name))


class Runtime:
    """Streams and events that log; "device" buffers are NumPy arrays copied into at once."""

    def __init__(self):
        self.log, self.events = [], 0
        self.compute = Stream(self, "compute")

    def stream(self):
        return Stream(self, "copy")

    def event(self):
        self.events += 1
        return Event(self, f"e{self.events}")

    def current_stream(self):
        return self.compute

    def pinned(self, shape, dtype):
        return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype)

    def device(self, shape, dtype):
        return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype)

    def copy(self, device, host, stream):
        self.log.append(("copy", stream.name))
        device[...] = host


def test_batches_arrive_whole_and_no_buffer_is_reused_before_it_is_free():
    runtime = Runtime()
    up = PinnedUploader(runtime, 4, (3,), np.float32, (), np.int64)
    (copied0, consumed0), (copied1, consumed1) = [(s.copied.name, s.consumed.name) for s in up.slots]
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((n, 3)).astype(np.float32), rng.integers(0, 9, n))
               for n in (4, 4, 4, 2)]
    tickets, got = [], []
    for i, (x, y) in enumerate(batches):  # as Streamed.feed runs them: one batch ahead
        tickets.append(up.start(x, y))
        if i:
            got.append(tuple(a.copy() for a in up.finish(tickets[i - 1])))
            up.release(tickets[i - 1])
    got.append(tuple(a.copy() for a in up.finish(tickets[-1])))
    for (x, y), (gx, gy) in zip(batches, got):
        np.testing.assert_array_equal(gx, x)
        np.testing.assert_array_equal(gy, y)
    log = runtime.log
    third = log.index(("sync", copied0))  # batch 2 reuses slot 0
    assert log.index(("record", consumed0, "compute")) < third  # batch 0's step was queued,
    assert log[third + 1] == ("wait", "copy", consumed0)  # the copy waits for it on the GPU,
    assert log[third + 2] == ("copy", "copy")  # and only then overwrites the device buffer
    assert ("wait", "compute", copied1) in log  # compute waits for each batch's copy


def test_streamed_fit_through_the_pinned_uploader_equals_resident_fit():
    runtime = Runtime()
    bk = get_backend("numpy").configured()
    bk.uploader = lambda *shapes: PinnedUploader(runtime, *shapes)
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    histories = []
    for backend, stream in ((bk, True), ("numpy", False)):
        nn.set_seed(0)
        m = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        m.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend=backend)
        histories.append(m.fit(X, y, epochs=3, batch_size=40, seed=2, verbose=0,
                               stream=stream).history)
    assert histories[0] == histories[1] and ("copy", "copy") in runtime.log
