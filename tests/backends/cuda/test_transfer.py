"""The pinned, double-buffered uploader (gpunn/backends/cuda/transfer.py), on the CPU: a stand-in
runtime copies at once and records every CUDA call (and the thread that made it), so the order
of the waits that keep a buffer from being overwritten while it is read is checked without a
device, with the batches read on the calling thread or on the uploader's worker."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from support.cuda_runtime import Runtime

import gpunn as nn
from gpunn.backends import get_backend
from gpunn.backends.cuda.transfer import PinnedUploader


def upload_threads():
    return [t for t in threading.enumerate() if t.name.startswith("gpunn-upload")]


def run_batches(up, batches, pause=0.0):
    """The batches through ``up`` as Streamed.feed runs them (one batch ahead), each read taking
    ``pause`` seconds and logged as ("read", i) when it begins; what each finish gave, copied."""
    def read(i, x, y):
        up.runtime.log.append(("read", i))
        time.sleep(pause)
        return x, y

    tickets, got = [], []
    for i, (x, y) in enumerate(batches):
        tickets.append(up.start(lambda out, i=i, x=x, y=y: read(i, x, y)))
        if i:
            got.append(tuple(a.copy() for a in up.finish(tickets[i - 1])))
            up.release(tickets[i - 1])
    got.append(tuple(a.copy() for a in up.finish(tickets[-1])))
    up.release(tickets[-1])
    up.close()
    return got


def some_batches(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 3)).astype(np.float32), rng.integers(0, 9, n)) for n in sizes]


def test_batches_arrive_whole_and_no_buffer_is_reused_before_it_is_free():
    runtime = Runtime()
    up = PinnedUploader(runtime, 4, (3,), np.float32, (), np.int64)
    (copied0, consumed0), (copied1, consumed1) = [(s.copied.name, s.consumed.name) for s in up.slots]
    batches = some_batches((4, 4, 4, 2))
    got = run_batches(up, batches)
    for (x, y), (gx, gy) in zip(batches, got):
        np.testing.assert_array_equal(gx, x)
        np.testing.assert_array_equal(gy, y)
    log = [entry for entry in runtime.log if entry[0] != "read"]
    third = log.index(("sync", copied0))  # batch 2 reuses slot 0
    assert log.index(("record", consumed0, "compute")) < third  # batch 0's step was queued,
    assert log[third + 1] == ("wait", "copy", consumed0)  # the copy waits for it on the GPU,
    assert log[third + 2] == ("copy", "copy")  # and only then overwrites the device buffer
    assert ("wait", "compute", copied1) in log  # compute waits for each batch's copy


@pytest.mark.parametrize("pause", [0.0, 0.002])
def test_with_a_worker_reading_batches_arrive_whole_and_cuda_stays_on_the_calling_thread(pause):
    """upload_thread: three slots, the reads and the pinned copies on the worker (slowed by
    ``pause`` so that the calling thread runs ahead), every CUDA call on the calling thread, and
    a slot's device buffer overwritten only after the step that read it was queued."""
    runtime = Runtime(wait=0.002)
    up = PinnedUploader(runtime, 4, (3,), np.float32, (), np.int64, background=True)
    assert len(up.slots) == 3
    copied0, consumed0 = up.slots[0].copied.name, up.slots[0].consumed.name
    batches = some_batches((4, 4, 4, 4, 3, 4, 1))
    got = run_batches(up, batches, pause)
    for (x, y), (gx, gy) in zip(batches, got):
        np.testing.assert_array_equal(gx, x)
        np.testing.assert_array_equal(gy, y)
    assert runtime.threads == {threading.get_ident()}
    log = runtime.log
    fourth = log.index(("sync", copied0))  # batch 3 reuses slot 0
    assert log.index(("record", consumed0, "compute")) < fourth < log.index(("read", 3))
    copies = [i for i, entry in enumerate(log) if entry == ("copy", "copy")]
    assert log[copies[6] - 1] == ("wait", "copy", consumed0)  # batch 3's copy (x then y: 7th)
    assert not upload_threads()  # close() waited for the worker to end


def test_a_read_that_fails_on_the_worker_fails_the_batchs_finish_and_queues_nothing():
    runtime = Runtime()
    up = PinnedUploader(runtime, 4, (3,), np.float32, (), np.int64, background=True)
    (x, y), = some_batches((4,))

    def bad(out):
        raise OSError("the disk went away")

    good = up.start(lambda out: (x, y))
    broken = up.start(bad)
    np.testing.assert_array_equal(up.finish(good)[0], x)
    copies = runtime.log.count(("copy", "copy"))
    with pytest.raises(OSError, match="the disk went away"):
        up.finish(broken)
    assert runtime.log.count(("copy", "copy")) == copies
    up.close()
    assert not upload_threads()


@pytest.mark.parametrize("background", [False, True])
def test_streamed_fit_through_the_pinned_uploader_equals_resident_fit(background):
    runtime = Runtime()
    bk = get_backend("numpy").configured()
    made = []

    def uploader(*shapes):
        made.append(PinnedUploader(runtime, *shapes, background=background))
        return made[-1]

    bk.uploader = uploader
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    histories = []
    for backend, stream in ((bk, True), ("numpy", False)):
        nn.set_seed(0)
        m = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        m.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend=backend)
        histories.append(m.fit(X, y, epochs=3, batch_size=40, seed=2, verbose=0,
                               stream=stream).history)
    assert histories[0] == histories[1] and ("copy", "copy") in runtime.log
    assert made and not upload_threads()  # each feed closed its uploader
    assert runtime.threads == {threading.get_ident()}


def test_rows_a_read_wrote_into_the_pinned_buffers_are_not_copied_again(monkeypatch):
    """A read that gathers straight into the slot's pinned buffers (as Streamed's does) costs
    no second copy; a read that gives arrays of its own is copied in."""
    from types import SimpleNamespace

    from gpunn.backends.cuda import transfer

    copies = []
    monkeypatch.setattr(transfer, "np", SimpleNamespace(
        copyto=lambda dst, src: copies.append(dst.shape) or np.copyto(dst, src)))
    up = PinnedUploader(Runtime(), 4, (3,), np.float32, (), np.int64)
    (x, y), = some_batches((3,))

    def into(out):
        np.copyto(out[0][:3], x)
        np.copyto(out[1][:3], y)
        return out[0][:3], out[1][:3]

    got = up.finish(up.start(into))
    np.testing.assert_array_equal(got[0], x)
    np.testing.assert_array_equal(got[1], y)
    assert copies == []
    got = up.finish(up.start(lambda out: (x * 2, y + 1)))
    np.testing.assert_array_equal(got[0], x * 2)
    np.testing.assert_array_equal(got[1], y + 1)
    assert copies == [(3, 3), (3,)]
    up.close()
