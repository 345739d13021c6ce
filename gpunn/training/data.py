"""Where the data lives while ``fit``, ``evaluate`` and ``predict`` read it.

- ``Resident``: all of it on the device, checked and cast once (the fast path).
- ``Streamed``: in host memory (a NumPy array, an ``np.memmap``, a ``.npy`` file opened with
  ``mmap_mode``), checked a part at a time, and sent to the device a batch at a time, or runs
  of consecutive batches together, through the backend's uploader (on a GPU: pinned buffers on
  a copy stream, the next batches crossing while the steps of these run). Shuffles index the
  host array with the order the backend drew, so a streamed run takes the same batches as a
  resident one: the same numbers (bit for bit on NumPy).

``data_for`` chooses: data already on the device stays there; host data whose working copy fits
the backend's ``data_budget()`` (GPUNN_DATA_BUDGET, else half the free memory) is made resident,
larger data is streamed; ``stream=True`` / ``False`` decides instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from .. import checks
from ..backends import on_device
from ..network import Network
from .batches import Batch

_log = logging.getLogger("gpunn")
_said: set[str] = set()

#: Rows of streamed data checked (read and cast) at a time before training.
CHECK_ROWS = 1 << 16
#: A streamed batch is gathered into the uploader's buffers in parts of at least this many bytes,
#: each on a thread of its own (NumPy's copies and gathers let go of the GIL). On an H200's
#: 16-core host a large batch (8192 x 4096 float32, 128 MiB) took 24.0 ms into pinned memory on
#: one thread, 6.7 on 4, 5.2 on 8, 4.0 on 16; a medium one (1024 x 784, 3 MiB) 0.31 ms on one
#: and 0.45 on two, the hand-overs costing more than they save, so it stays whole (several
#: such batches are read at once instead: the uploader's READ_AHEAD).
PART_BYTES = 4 << 20
#: Threads a batch is gathered on, at most: 8, since the bench's streamed large steps there were
#: no faster with 16 (tf32 9.13 ms against 8.69 with 8; bf16 6.35 against 5.23), the gather
#: then competing with the thread that launches the steps.
GATHER_THREADS = min(8, os.cpu_count() or 1)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class Resident:
    """(X, y) prepared whole on the device (y None for predict)."""

    streamed = False

    def __init__(self, X: Any, y: Any) -> None:
        self.X, self.y = X, y
        self.n = X.shape[0]

    def feed(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, tuple | None]]:
        """Each batch with what a step's ``load`` takes for it (None for an empty one)."""
        for batch in batches:  # an empty part (distributed training) has nothing to load
            yield batch, (self.X, self.y, batch.start, batch.stop, batch.order) if batch.rows else None

    def chunks(self, rows: int, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
        """(X, y) rows ``rows`` at a time, as device arrays (the first ``limit`` rows only)."""
        n = self.n if limit is None else min(limit, self.n)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            yield self.X[start:stop], None if self.y is None else self.y[start:stop]

    def split(self, keep: int) -> tuple[Resident, Resident]:
        """The first ``keep`` rows and the rest."""
        y = self.y
        return (Resident(self.X[:keep], None if y is None else y[:keep]),
                Resident(self.X[keep:], None if y is None else y[keep:]))


def _gather(source: np.ndarray, index: Any, out: np.ndarray) -> np.ndarray:
    """out = source[index] in out's dtype (as astype casts): a large batch in parts of at least
    PART_BYTES, on up to GATHER_THREADS threads at once, each part a plain gather of its rows."""
    parts = min(GATHER_THREADS, out.nbytes // PART_BYTES, out.shape[0])
    if parts <= 1:
        return gather_rows(source, index, out)
    rows = range(source.shape[0])[index] if isinstance(index, slice) else index
    bounds = np.linspace(0, out.shape[0], parts + 1).astype(int)
    done = wait([_gather_pool().submit(gather_rows, source, _as_index(rows[a:b]), out[a:b])
                 for a, b in zip(bounds[:-1], bounds[1:])])
    for part in done.done:  # every part has finished, so none writes after an error is raised
        part.result()
    return out


def _as_index(rows: Any) -> Any:
    """A part of a slice's range as a slice again (a basic index: a view, not a copy)."""
    if not isinstance(rows, range):
        return rows
    stop = None if rows.stop < 0 else rows.stop  # a reversed range that runs to row 0
    return slice(rows.start, stop, rows.step)


def _gather_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(GATHER_THREADS, thread_name_prefix="gpunn-gather")
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads are not there, and a pool that believes it
    has them would queue parts that never run; the child makes a pool of its own when needed."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_pool)


def gather_rows(source: np.ndarray, index: Any, out: np.ndarray) -> np.ndarray:
    """out = source[index] in out's dtype, in one pass where the dtypes agree. np.take's "clip"
    mode: the indices are a permutation's, always in range, and its default ("raise") buffers
    the whole output before copying it to ``out``."""
    if isinstance(index, slice) or source.dtype != out.dtype:
        np.copyto(out, source[index], casting="unsafe")
    else:
        np.take(source, index, axis=0, out=out, mode="clip")
    return out


class Streamed:
    """Host (X, y), read and sent to the device a batch, or a run of batches, at a time."""

    streamed = True

    def __init__(self, network: Network, X: np.ndarray, y: Any) -> None:
        self.network = network
        self.X = X  # host rows in the data's own dtype; each batch is cast as it is read
        self.y = y  # host targets, checked and in working form (they are small), or None
        self.n = X.shape[0]

    @classmethod
    def checked(cls, network: Network, X: Any, y: Any, name: str = "") -> Streamed:
        """Check all of host (X, y) against the network, X a part at a time (never all of it
        in memory at once), before anything else happens."""
        X = checks.features_shape(X, f"{name}X", network.n_inputs)
        for start in range(0, X.shape[0], CHECK_ROWS):
            checks.finite_in(X[start:start + CHECK_ROWS], network.dtype, f"{name}X", start)
        if y is not None:
            y = network.loss.prepare_targets(y, X.shape[0], network.n_outputs)
            y = checks.finite_in(y, network.loss.targets_dtype(network.dtype), f"{name}y")
        return cls(network, X, y)

    def rows(self, index: Any, out: list[np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        """Host rows ``index`` (a slice, or part of a shuffle order) in working form: written
        into ``out`` (the uploader's pinned buffers, x's then y's, rows first) where given, so a
        shuffled batch is gathered straight into them (a 1024 x 784 float32 batch on a 2-core
        Xeon: 0.34 ms, against 0.62 for a gather and then a copy), else new arrays."""
        if out is None:
            x = np.ascontiguousarray(self.X[index], dtype=self.network.dtype)
            return x, None if self.y is None else np.ascontiguousarray(self.y[index])
        n = len(range(self.n)[index]) if isinstance(index, slice) else len(index)
        x = _gather(self.X, index, out[0][:n])
        return x, None if self.y is None else _gather(self.y, index, out[1][:n])

    def feed(self, batches: Iterable[Batch], n: int | None = None
             ) -> Iterator[tuple[Batch, tuple | None]]:
        """Each batch with what a step's ``load`` takes for it (None for an empty one), sent
        through the backend's uploader by a ``_Sender``. ``n``: the rows the batches cover (all
        the data's by default), which bounds how many there are; no batch may be bigger than
        the first."""
        sender = None
        try:
            for batch in batches:
                if not batch.rows:  # an empty part (distributed training): nothing to send
                    if sender is not None:
                        yield from sender.drain()
                    yield batch, None
                    continue
                if sender is None:
                    sender = _Sender(self, self._uploader(batch, n))
                yield from sender.add(batch)
            if sender is not None:
                yield from sender.drain()
        finally:
            if sender is not None:
                sender.uploader.close()

    def _uploader(self, first: Batch, n: int | None) -> Any:
        """The backend's uploader for batches no bigger than the ``first`` over ``n`` rows
        (None: all the data's)."""
        y = self.y
        # A rank's part of a batch is never next to its part of the next batch: none join.
        most = 1 if first.whole else -(-(self.n if n is None else n) // first.rows)
        return self.network.backend.uploader(first.rows, self.X.shape[1:], self.network.dtype,
                                             None if y is None else y.shape[1:],
                                             None if y is None else y.dtype, most)

    def chunks(self, rows: int, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
        n = self.n if limit is None else min(limit, self.n)
        batches = (Batch(start, min(start + rows, n)) for start in range(0, n, rows))
        for _, (x, y, start, stop, _) in self.feed(batches, n):
            yield x[start:stop], None if y is None else y[start:stop]

    def split(self, keep: int) -> tuple[Streamed, Streamed]:
        y = self.y
        return (Streamed(self.network, self.X[:keep], None if y is None else y[:keep]),
                Streamed(self.network, self.X[keep:], None if y is None else y[keep:]))


class _Sender:
    """Batches through an uploader: runs of consecutive batches (the next rows of one order)
    started together, up to the uploader's ``batches`` at a time, and the next starts (its
    ``ahead`` of them) made before one is handed over, so they are read and cross while the
    steps of the one handed over run."""

    def __init__(self, data: Streamed, uploader: Any) -> None:
        self.data, self.uploader = data, uploader
        self.group: list[Batch] = []  # batches to start together, gathered until no more join
        self.pending: deque[tuple[list[Batch], Any]] = deque()  # started, in order
        self.order: Any = None  # the epoch's shuffle, and its host copy (made once)
        self.host_order: Any = None

    def add(self, batch: Batch) -> Iterator[tuple[Batch, tuple]]:
        """Take a batch (not empty); hand over what is due."""
        if self.group and not self._joins(batch):
            yield from self._start()
        if batch.order is not None and batch.order is not self.order:
            self.order, self.host_order = batch.order, self.data.network.backend.to_numpy(batch.order)
        self.group.append(batch)
        if len(self.group) == self.uploader.batches:
            yield from self._start()

    def drain(self) -> Iterator[tuple[Batch, tuple]]:
        """Start what was taken and hand everything over."""
        if self.group:
            yield from self._start()
        while self.pending:
            yield from self._hand_over(*self.pending.popleft())

    def _joins(self, batch: Batch) -> bool:
        last = self.group[-1]
        return batch.order is last.order and batch.start == last.stop

    def _start(self) -> Iterator[tuple[Batch, tuple]]:
        """Start the group (its rows read at once); hand over the oldest start past ``ahead``."""
        first, last = self.group[0], self.group[-1]
        index = slice(first.start, last.stop) if first.order is None \
            else self.host_order[first.start:last.stop]
        data = self.data
        self.pending.append((self.group, self.uploader.start(lambda out: data.rows(index, out))))
        self.group = []
        if len(self.pending) > self.uploader.ahead:
            yield from self._hand_over(*self.pending.popleft())

    def _hand_over(self, group: list[Batch], ticket: Any) -> Iterator[tuple[Batch, tuple]]:
        """Each batch of a start with its rows of the start's device arrays."""
        x, y = self.uploader.finish(ticket)
        start = 0
        for batch in group:
            yield batch, (x, y, start, start + batch.rows, None)
            start += batch.rows
        self.uploader.release(ticket)  # the steps that read them are queued


def data_for(network: Network, X: Any, y: Any, stream: bool | None = None,
             name: str = "") -> Resident | Streamed:
    """Checked (X, y) (y None for predict), resident on the device or streamed from the host."""
    if stream not in (None, True, False):
        raise TypeError(f"stream must be None (decide by size), True or False; got {stream!r}")
    if on_device(X) or stream is False:
        return _resident(network, X, y, name)
    host = checks.features_shape(X, f"{name}X", network.n_inputs)
    if stream is None:
        size = host.shape[0] * host.shape[1] * network.dtype.itemsize
        budget = network.backend.data_budget()
        if size <= budget:
            return _resident(network, host, y, name)
        _say_once(f"gpunn: streaming {name}X from host memory a batch at a time: "
                  f"{size / 2**30:.2f} GiB in {network.dtype} is over the "
                  f"{budget / 2**30:.2f} GiB data budget (GPUNN_DATA_BUDGET; fit(stream=...))")
    return Streamed.checked(network, host, y, name)


def _resident(network: Network, X: Any, y: Any, name: str) -> Resident:
    if y is None:
        X = checks.features(X, f"{name}X", network.n_inputs, network.dtype)
        return Resident(network.backend.asarray(X), None)
    return Resident(*network.prepare(X, y, name=name))


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        _log.info(message)
