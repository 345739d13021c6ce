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
from gpunn.backends.cuda.transfer import READ_AHEAD, PinnedUploader


def upload_threads():
    return [t for t in threading.enumerate() if t.name.startswith("gpunn-upload")]


def run_batches(up, batches, pause=0.0, read=None):
    """The batches through ``up`` as Streamed.feed runs them (``up.ahead`` batches started before
    the first of them is handed over), each read taking ``pause`` seconds and logged as
    ("read", i) when it begins, or done by ``read(i, x, y)`` where given; what each finish gave,
    copied."""
    def logged(i, x, y):
        up.runtime.log.append(("read", i))
        time.sleep(pause)
        return x, y

    read = read or logged

    def hand_over(ticket):
        got.append(tuple(a.copy() for a in up.finish(ticket)))
        up.release(ticket)

    tickets, got = [], []
    for i, (x, y) in enumerate(batches):
        tickets.append(up.start(lambda out, i=i, x=x, y=y: read(i, x, y)))
        if i >= up.ahead:
            hand_over(tickets[i - up.ahead])
    for ticket in tickets[max(0, len(tickets) - up.ahead):]:
        hand_over(ticket)
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
    """upload_thread: READ_AHEAD + 2 slots, the reads and the pinned copies on the workers
    (slowed by ``pause`` so that the calling thread runs ahead), every CUDA call on the calling
    thread, and a slot's device buffer overwritten only after the step that read it was queued."""
    runtime = Runtime(wait=0.002)
    up = PinnedUploader(runtime, 4, (3,), np.float32, (), np.int64, background=True)
    assert up.ahead == READ_AHEAD and len(up.slots) == READ_AHEAD + 2
    copied0, consumed0 = up.slots[0].copied.name, up.slots[0].consumed.name
    batches = some_batches((4, 4, 4, 4, 3, 4, 1, 2, 4))
    got = run_batches(up, batches, pause)
    for (x, y), (gx, gy) in zip(batches, got):
        np.testing.assert_array_equal(gx, x)
        np.testing.assert_array_equal(gy, y)
    assert runtime.threads == {threading.get_ident()}
    log = runtime.log
    reuse = len(up.slots)  # the first batch in slot 0 again
    again = log.index(("sync", copied0))
    assert log.index(("record", consumed0, "compute")) < again < log.index(("read", reuse))
    copies = [i for i, entry in enumerate(log) if entry == ("copy", "copy")]
    assert log[copies[2 * reuse] - 1] == ("wait", "copy", consumed0)  # its copy (x, then y)
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


@pytest.mark.parametrize("per_start", [1, 3, "all"])
@pytest.mark.parametrize("background", [False, True])
def test_streamed_fit_through_the_pinned_uploader_equals_resident_fit(background, per_start):
    """The same history streamed as resident, a batch to a start, three, or all an epoch's
    (four batches of 40 rows, the last of 30), read on the calling thread or on workers."""
    runtime = Runtime()
    bk = get_backend("numpy").configured()
    made = []

    def uploader(rows, x_tail, x_dtype, y_tail, y_dtype, most_batches):
        made.append(PinnedUploader(runtime, rows, x_tail, x_dtype, y_tail, y_dtype,
                                   batches=most_batches if per_start == "all" else per_start,
                                   background=background))
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
    assert histories[0] == histories[1]
    # Each epoch's starts (x and y copied for each), then one for fit's last check of a batch.
    starts = {1: 4, 3: 2, "all": 1}[per_start]
    assert runtime.log.count(("copy", "copy")) == 2 * (3 * starts + 1)
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


def test_a_background_uploader_reads_read_ahead_batches_at_once():
    """upload_thread: the READ_AHEAD batches started before one is handed over are read at the
    same time, each on a worker of its own, and still arrive whole and in order."""
    runtime = Runtime()
    up = PinnedUploader(runtime, 4, (3,), np.float32, (), np.int64, background=True)
    lock, reading, most, readers = threading.Lock(), [0], [0], set()

    def read(i, x, y):
        with lock:
            reading[0] += 1
            most[0] = max(most[0], reading[0])
            readers.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            reading[0] -= 1
        return x, y

    batches = some_batches((4,) * 7, seed=3)
    got = run_batches(up, batches, read=read)
    assert most[0] == READ_AHEAD and len(readers) == READ_AHEAD
    for (x, y), (gx, gy) in zip(batches, got, strict=True):
        np.testing.assert_array_equal(gx, x)
        np.testing.assert_array_equal(gy, y)


def test_streamed_feed_starts_runs_of_batches_together_ahead_of_handing_them_over():
    """Streamed.feed starts runs of consecutive batches together, up to the uploader's
    ``batches`` (a gap, another order or an empty part ends a run), keeps ``ahead`` starts made
    and not handed over, and hands every batch over in order with its rows of the start's
    arrays, releasing a start after its last batch is used, and all of them before an empty
    part (distributed training) or the end."""
    from gpunn.training.batches import Batch
    from gpunn.training.data import Streamed

    class Recorder:
        def __init__(self, ahead, batches):
            self.ahead, self.batches, self.log = ahead, batches, []

        def start(self, read):
            x, _ = read(None)
            self.log.append(("start", tuple(int(v) for v in x[:, 0])))
            return sum(e[0] == "start" for e in self.log) - 1, x

        def finish(self, ticket):
            self.log.append(("finish", ticket[0]))
            return ticket[1], None

        def release(self, ticket):
            self.log.append(("release", ticket[0]))

        def close(self):
            self.log.append(("close",))

    m = nn.Sequential([nn.Dense(1, 2)]).compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy")
    X = np.arange(20, dtype=np.float32)[:, None]
    order = np.random.default_rng(0).permutation(20)
    batches = [Batch(i, i + 2) for i in range(0, 10, 2)] + [Batch(10, 10)] \
        + [Batch(12, 14), Batch(14, 16), Batch(0, 2, order), Batch(2, 4, order), Batch(5, 7, order)]
    runs = {1: [[i] for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)],  # batch 5 is the empty part
            2: [[0, 1], [2, 3], [4], [6, 7], [8, 9], [10]],
            4: [[0, 1, 2, 3], [4], [6, 7], [8, 9], [10]]}
    for ahead in (1, 3):
        for per_start, expected in runs.items():
            up = Recorder(ahead, per_start)
            m.backend.uploader = lambda *shapes, up=up: up
            fed = []
            for i, (batch, loadable) in enumerate(Streamed(m.network, X, None).feed(batches)):
                up.log.append(("use", i))
                fed.append(batch)
                if loadable is not None:
                    x, _, a, b, _ = loadable
                    rows = slice(batch.start, batch.stop) if batch.order is None \
                        else batch.order[batch.start:batch.stop]
                    np.testing.assert_array_equal(x[a:b], X[rows])
            assert [(b.start, b.stop) for b in fed] == [(b.start, b.stop) for b in batches]
            assert up.log[-1] == ("close",)
            starts = [e[1] for e in up.log if e[0] == "start"]
            assert starts == [tuple(int(v) for i in run for v in
                                    (range(batches[i].start, batches[i].stop) if batches[i].order is None
                                     else order[batches[i].start:batches[i].stop])) for run in expected]
            log = up.log
            for k, run in enumerate(expected):
                uses = [log.index(("use", i)) for i in run]
                assert log.index(("finish", k)) < min(uses) and max(uses) < log.index(("release", k))
                if k + ahead < len(expected) and (run[0] < 5) == (expected[k + ahead][0] < 5):
                    assert log.index(("start", starts[k + ahead])) < log.index(("finish", k))
            before_empty = [k for k, run in enumerate(expected) if run[0] < 5]
            assert all(log.index(("release", k)) < log.index(("use", 5)) for k in before_empty)


def test_workers_read_batches_of_a_mebibyte_or_more_by_default_on_cupy(emulated, monkeypatch):
    """upload_thread is on by default on the CuPy backend, and the uploader it makes reads on
    workers only batches (x and y together) of WORKER_MIN_BYTES or more: a hand-over costs
    more than a small read. Off, no batch is read on a worker."""
    from gpunn.backends.cuda import transfer
    from gpunn.backends.cupy_backend import CupyBackend

    monkeypatch.setattr(transfer, "CupyRuntime", lambda xp: Runtime())
    bk = emulated.configured()
    assert bk.upload_thread and bk.options_set() == {}
    float_rows = transfer.WORKER_MIN_BYTES // (4 * 64 + 8)  # float32 rows of 64, int64 labels
    cases = [(float_rows + 1, (64,), (), True), (float_rows, (64,), (), False),
             (transfer.WORKER_MIN_BYTES // 256, (64,), None, True),  # x alone: 1 MiB exactly
             (transfer.WORKER_MIN_BYTES // 256 - 1, (64,), None, False),
             (1024, (784,), (), True),  # medium's batch, 3.2 MB
             (300, (2,), (), False)]  # small's, 4.8 KB
    for rows, x_tail, y_tail, workers in cases:
        for option in (True, False):
            bk.upload_thread = option
            up = CupyBackend.uploader(bk, rows, x_tail, np.float32, y_tail, np.int64)
            on_workers = option and workers
            assert (up.worker is not None, up.ahead, len(up.slots)) == \
                ((True, READ_AHEAD, READ_AHEAD + 2) if on_workers else (False, 1, 2)), (rows, option)
            up.close()
    assert not upload_threads()


def test_the_cupy_uploader_carries_consecutive_batches_together_up_to_group_bytes(emulated,
                                                                                   monkeypatch):
    """A start carries as many batches as fit GROUP_BYTES (at least one, at most the data's
    count), with buffers for all of them; workers read a start of WORKER_MIN_BYTES or more,
    whether one batch or a group makes it."""
    from gpunn.backends.cuda import transfer
    from gpunn.backends.cupy_backend import CupyBackend

    monkeypatch.setattr(transfer, "CupyRuntime", lambda xp: Runtime())
    bk = emulated.configured()
    small = 300 * 2 * 4 + 300 * 8  # small's batch: x and its int64 labels, 4800 bytes
    assert transfer.GROUP_BYTES // small == 218
    assert transfer.batches_per_start(8192, (4096,), np.float32, (), np.int64, 10) == 1  # large
    cases = [(1024, (784,), 100, 1, True),  # medium's 3.2 MB batches: alone, on workers
             (300, (2,), 1, 1, False), (300, (2,), 100, 100, False), (300, (2,), 10**6, 218, False),
             (64, (784,), 400, 5, False)]  # 196 KiB batches: five (980 KiB) to a start
    for rows, x_tail, most, batches, workers in cases:
        up = CupyBackend.uploader(bk, rows, x_tail, np.float32, (), np.int64, most)
        assert (up.batches, up.rows, up.worker is not None) == (batches, rows * batches, workers)
        assert up.slots[0].host[0].shape == up.slots[0].device[0].shape == (rows * batches, *x_tail)
        up.close()
    monkeypatch.setattr(transfer, "WORKER_MIN_BYTES", 512 << 10)
    up = CupyBackend.uploader(bk, 64, (784,), np.float32, (), np.int64, 400)
    assert (up.batches, up.worker is not None) == (5, True)  # the group's bytes, not a batch's
    up.close()
    up = CupyBackend.uploader(bk, 64, (784,), np.float32, (), np.int64, 2)
    assert (up.batches, up.worker is not None) == (2, False)
    up.close()
    assert not upload_threads()
