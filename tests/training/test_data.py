"""training/data.py: data streamed from host memory a batch at a time trains, evaluates and
predicts exactly as data kept whole on the device (bit for bit on NumPy), is checked everywhere
before training, and is never read whole."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import gpunn as nn
from gpunn.backends import passes
from gpunn.training import data as data_module


def model(dtype="float32", dropout=True):
    nn.set_seed(0)
    layers = [nn.Dense(2, 16, init="he"), nn.ReLU()] + ([nn.Dropout(0.1)] if dropout else [])
    m = nn.Sequential(layers + [nn.Dense(16, 3)])
    return m.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="numpy", dtype=dtype)


@pytest.fixture
def on_disk(tmp_path):
    """Spiral data as a float64 .npy file opened as a memmap, labels in memory."""
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    np.save(tmp_path / "X.npy", X)
    return np.load(tmp_path / "X.npy", mmap_mode="r"), y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_streamed_training_equals_resident_training_bit_for_bit(on_disk, dtype):
    X, y = on_disk
    assert_same_runs(*(train(X, y, stream, dtype) for stream in (False, True)))


def train(X, y, stream, dtype="float32"):
    """fit with a validation split, then evaluate and predict, all with ``stream``."""
    m = model(dtype)
    history = m.fit(X, y, epochs=3, batch_size=32, seed=1, verbose=0, stream=stream,
                    validation_split=0.2)
    return m, history.history, m.evaluate(X, y, stream=stream), m.predict(X, batch_size=50,
                                                                            stream=stream)


def assert_same_runs(first, second):
    """The same history, evaluation, predictions and parameters, bit for bit."""
    (a, ha, ea, pa), (b, hb, eb, pb) = first, second
    assert ha == hb and ea == eb
    np.testing.assert_array_equal(pa, pb)
    for p, q in zip(a.get_params(), b.get_params()):
        np.testing.assert_array_equal(p, q)


def test_data_over_the_budget_is_streamed_never_read_whole_and_said_once(tmp_path, monkeypatch,
                                                                          caplog):
    """A 51 MB memmap, a 1 MB budget: fit reads it a part at a time (checks) and a batch at a
    time (training); the memory it allocates stays far below the data's size."""
    import tracemalloc

    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64,
                                  shape=(200_000, 32))
    rng = np.random.default_rng(0)
    for start in range(0, 200_000, 20_000):
        X[start:start + 20_000] = rng.standard_normal((20_000, 32))
    y = (X[:, 0] > 0).astype(np.int64)
    monkeypatch.setenv("GPUNN_DATA_BUDGET", "1M")
    monkeypatch.setattr(data_module, "CHECK_ROWS", 4096)

    def net():
        nn.set_seed(0)
        m = nn.Sequential([nn.Dense(32, 16, init="he"), nn.ReLU(), nn.Dense(16, 2)])
        m.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend="numpy")
        return m

    # Compiling the NumPy backend's element-wise passes (with numba, where it is installed)
    # allocates some 30 MB of Python objects once a process: here they start from the first op
    # (not after passes.NUMPY_FIRST elements, which earlier tests may have used up or not), and
    # a network of the same shape trains on a few rows first, so that the peak below measures
    # the data, whichever test ran first.
    monkeypatch.setattr(passes, "numpy_first", passes.NumpyFirst(0))
    warm = net()
    warm.fit(X[:8192], y[:8192], epochs=1, batch_size=4096, verbose=0, stream=False)
    warm.evaluate(X[:8192], y[:8192], stream=False)
    m = net()
    tracemalloc.start()
    with caplog.at_level(logging.INFO, logger="gpunn"):
        history = m.fit(X, y, epochs=1, batch_size=4096, seed=1, verbose=0)
        m.evaluate(X, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 12e6, f"{peak / 1e6:.1f} MB allocated for 51 MB of data"
    assert history["accuracy"][-1] > 0.8
    said = [r.getMessage() for r in caplog.records if "streaming X" in r.getMessage()]
    assert len(said) <= 1  # once a process (an earlier test may have said it already)


def test_streamed_data_is_checked_whole_a_part_at_a_time_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CHECK_ROWS", 100)
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=(1000, 2))
    X[:] = np.random.default_rng(0).standard_normal((1000, 2))
    X[777, 1] = np.nan
    y = np.zeros(1000, dtype=np.int64)
    m = model()
    before = m.get_params()
    with pytest.raises(ValueError, match=r"X must be finite; got nan at row 777, column 1"):
        m.fit(X, y, epochs=1, batch_size=100, verbose=0, stream=True)
    X[777, 1] = 1e39  # finite in float64, not in the model's float32
    with pytest.raises(ValueError, match=r"X holds 1e\+39 at row 777, column 1, beyond the range"):
        m.fit(X, y, epochs=1, batch_size=100, verbose=0, stream=True)
    X[777, 1] = 0.0
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\); got 7 at row 5"):
        m.fit(X, np.where(np.arange(1000) == 5, 7, y), epochs=1, batch_size=100, verbose=0,
              stream=True)
    with pytest.raises(ValueError, match="full-batch training needs all of X on the device"):
        m.fit(X, y, epochs=1, batch_size=None, verbose=0, stream=True)
    with pytest.raises(TypeError, match="stream must be None"):
        m.fit(X, y, verbose=0, stream="yes")
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_params()))
    assert m.optimizer.iterations == 0


def test_a_bad_budget_setting_is_named(on_disk, monkeypatch):
    monkeypatch.setenv("GPUNN_DATA_BUDGET", "lots")
    with pytest.raises(ValueError, match="GPUNN_DATA_BUDGET must be a number of bytes"):
        model().fit(*on_disk, epochs=1, verbose=0)
    monkeypatch.setenv("GPUNN_DATA_BUDGET", "1.5G")
    assert nn.backends.get_backend("numpy").data_budget() == 1.5 * 2**30


@pytest.fixture
def in_parts(tmp_path):
    """Spiral data cut into .npy files of 120, 1 and 179 rows (X and y each), and the whole."""
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    cuts = [(0, 120), (120, 121), (121, 300)]
    for i, (a, b) in enumerate(cuts):
        np.save(tmp_path / f"X-{i}.npy", X[a:b])
        np.save(tmp_path / f"y-{i}.npy", y[a:b])
    return tmp_path, X, y


@pytest.mark.parametrize("stream", [None, True])
def test_data_in_several_npy_files_trains_as_the_whole_array(in_parts, stream):
    """datasets.NpyParts: the same batches as the joined array, bit for bit, resident or
    streamed, with a validation split, evaluate and predict."""
    folder, X, y = in_parts
    parts_X = nn.datasets.NpyParts(str(folder / "X-*.npy"))
    parts_y = nn.datasets.NpyParts([folder / f"y-{i}.npy" for i in range(3)])
    assert_same_runs(train(X, y, False), train(parts_X, parts_y, stream))


def test_npy_parts_index_as_the_joined_array_and_stream_without_reading_it_whole(in_parts,
                                                                                 monkeypatch):
    folder, X, _ = in_parts
    parts = nn.datasets.NpyParts(str(folder / "X-*.npy"))
    assert (parts.shape, parts.dtype, parts.ndim, len(parts)) == (X.shape, X.dtype, 2, 300)
    np.testing.assert_array_equal(np.asarray(parts), X)
    np.testing.assert_array_equal(np.asarray(parts[100:250]), X[100:250])  # across all three
    np.testing.assert_array_equal(np.asarray(parts[100:250][15:22]), X[115:122])
    rows = np.array([299, 0, 120, 121, 119, 120])
    np.testing.assert_array_equal(parts[rows], X[rows])
    np.testing.assert_array_equal(parts[-1], X[-1])
    np.testing.assert_array_equal(np.asarray(parts[::7]), X[::7])
    assert parts[150, 1] == X[150, 1]
    np.testing.assert_array_equal(parts[119:122, 1], X[119:122, 1])
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 300\)"):
        parts[np.array([3, 300])]
    with pytest.raises(TypeError, match="an int, a slice or a 1-D integer array"):
        parts[np.array([0.5])]
    read = []  # rows read at once, whatever reads them
    whole = nn.datasets.NpyParts.__array__
    monkeypatch.setattr(nn.datasets.NpyParts, "__array__",
                        lambda self, *a, **k: read.append(len(self)) or whole(self, *a, **k))
    monkeypatch.setattr(data_module, "CHECK_ROWS", 64)
    model().fit(parts, np.asarray(in_parts[2]), epochs=1, batch_size=32, verbose=0, stream=True)
    assert read and max(read) <= 64


def test_npy_parts_say_what_is_wrong_with_the_files(in_parts):
    folder, X, _ = in_parts
    np.save(folder / "wide.npy", np.zeros((5, 3)))
    np.save(folder / "ints.npy", np.zeros((5, 2), dtype=np.int64))
    (folder / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"wide.npy holds rows of shape \(3,\) and dtype float64; "
                                         r".*X-0.npy holds \(2,\), float64: the parts must agree"):
        nn.datasets.NpyParts([folder / "X-0.npy", folder / "wide.npy"])
    with pytest.raises(ValueError, match="ints.npy holds rows of shape .* dtype int64"):
        nn.datasets.NpyParts([folder / "X-0.npy", folder / "ints.npy"])
    with pytest.raises(ValueError, match="junk.npy is not a valid .npy file"):
        nn.datasets.NpyParts([folder / "junk.npy"])
    with pytest.raises(FileNotFoundError, match="no such .npy file: .*missing.npy"):
        nn.datasets.NpyParts([folder / "missing.npy"])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        nn.datasets.NpyParts(str(folder / "nothing-*.npy"))
    with pytest.raises(ValueError, match="at least one .npy file"):
        nn.datasets.NpyParts([])
    X[150, 1] = np.nan  # a NaN in the third file is named by its row in the whole
    np.save(folder / "X-2.npy", X[121:])
    m = model()
    with pytest.raises(ValueError, match=r"X must be finite; got nan at row 150, column 1"):
        m.fit(nn.datasets.NpyParts(str(folder / "X-*.npy")), np.zeros(300, np.int64),
              verbose=0, stream=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_streamed_rows_gathered_into_the_uploaders_buffers_are_the_rows_read_anew(on_disk, dtype):
    """What a pinned uploader's slot gets (rows written straight into its buffers: a slice, a
    shuffled part; cast from the memmap's float64, or not) is what a plain read gives, bit for
    bit, and lies at the start of those buffers."""
    X, y = on_disk
    m = model(dtype)
    streamed = data_module.Streamed.checked(m.network, X, y)
    out = [np.full((40, 2), np.nan, dtype), np.full((40,), -1, np.int64)]
    order = np.random.default_rng(3).permutation(X.shape[0])
    for index in (slice(10, 45), order[:40], order[100:137]):
        want_x, want_y = streamed.rows(index)
        got_x, got_y = streamed.rows(index, out)
        assert got_x.dtype == want_x.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)
        assert np.shares_memory(got_x, out[0]) and got_x.ctypes.data == out[0].ctypes.data
        assert np.shares_memory(got_y, out[1]) and got_y.ctypes.data == out[1].ctypes.data


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_streamed_batches_are_gathered_in_parts_on_threads_with_the_same_rows(
        on_disk, dtype, monkeypatch):
    """A batch over PART_BYTES is gathered in parts, each on a thread of the gather pool: the
    rows written are those a plain read gives, bit for bit, whatever the index (slices forwards,
    stepped and reversed, shuffled parts; cast from the memmap's float64 or not); an error in
    one part comes out of the read once every part has stopped."""
    X, y = on_disk
    streamed = data_module.Streamed.checked(model(dtype).network, X, y)
    monkeypatch.setattr(data_module, "PART_BYTES", 64)  # 40 rows: 5 or 10 parts of 64 bytes, capped at 4
    monkeypatch.setattr(data_module, "GATHER_THREADS", 4)
    plain_part = data_module.gather_rows
    threads: list[tuple[str, int, int]] = []

    def part(source, index, out):
        threads.append((threading.current_thread().name, out.ndim, len(out)))
        return plain_part(source, index, out)

    monkeypatch.setattr(data_module, "gather_rows", part)
    order = np.random.default_rng(5).permutation(X.shape[0])
    for index in (slice(10, 50), slice(273, None, -7), slice(None, 40, None), order[:40], order[7:47]):
        out = [np.full((40, 2), np.nan, dtype), np.full((40,), -1, np.int64)]
        threads.clear()
        got_x, got_y = streamed.rows(index, out)
        want_x = np.asarray(X[index], dtype)
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, y[index])
        assert got_x.ctypes.data == out[0].ctypes.data
        assert sorted((ndim, rows) for _, ndim, rows in threads) == [(1, 10)] * 4 + [(2, 10)] * 4
        assert all(name.startswith("gpunn-gather") for name, _, _ in threads)

    stopped: list[str] = []
    first = threading.Lock()

    def failing(source, index, out):
        if first.acquire(blocking=False):  # the first part to start fails at once
            stopped.append("failed")
            raise RuntimeError("a part failed")
        time.sleep(0.05)
        stopped.append("done")
        return plain_part(source, index, out)

    monkeypatch.setattr(data_module, "gather_rows", failing)
    out = [np.empty((40, 2), dtype), np.empty((40,), np.int64)]
    with pytest.raises(RuntimeError, match="a part failed"):
        streamed.rows(order[:40], out)
    assert sorted(stopped) == ["done"] * 3 + ["failed"]  # x's four parts had all stopped


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_a_forked_child_gathers_large_batches_on_threads_of_its_own(on_disk, monkeypatch):
    """A process forked after the gather pool has run (multiprocessing's default on Linux)
    gathers in parts too: the parent's pool threads are not in the child, and a child that used
    the parent's pool would wait for them for ever (SIGALRM ends it here after 20 s)."""
    X, y = on_disk
    streamed = data_module.Streamed.checked(model().network, X, y)
    monkeypatch.setattr(data_module, "PART_BYTES", 64)
    monkeypatch.setattr(data_module, "GATHER_THREADS", 4)
    out = [np.empty((40, 2), np.float32), np.empty((40,), np.int64)]
    streamed.rows(slice(0, 40), out)  # the parent's pool exists now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        pid = os.fork()
    if pid == 0:  # the child: exit 0 if its rows are right
        signal.alarm(20)
        try:
            got, _ = streamed.rows(slice(5, 45), [np.zeros((40, 2), np.float32),
                                                  np.zeros((40,), np.int64)])
            os._exit(0 if np.array_equal(got, np.asarray(X[5:45], np.float32)) else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, done
