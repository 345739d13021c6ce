"""Batches from host memory to the GPU while it computes: what ``fit`` uses for data too big to
keep on the device.

Two slots, each a pinned host buffer and a device buffer. ``start`` fills a slot's pinned buffer
(after its previous copy has left it) and queues the copy to its device buffer on a copy stream
(after the step that last read that device buffer); ``finish`` makes the compute stream wait for
the copy; ``release`` marks where the step that read it was queued. So batch i + 1 crosses the
bus while step i runs, and no buffer is overwritten while something still reads it. The read is
given the slot's pinned buffers and may write the rows there itself (``Streamed`` gathers a
shuffled batch straight into them), which then need no copy of their own.

With ``background`` (the backend option ``upload_thread``, for starts of WORKER_MIN_BYTES or
more), READ_AHEAD worker threads read the next batches, each into a slot's pinned buffer, while
the calling thread launches steps, over READ_AHEAD + 2 slots (being filled, crossing, being
read); ``ahead`` tells the caller how many batches to start before it hands one over. The copy
to the device is queued when the batch is handed over. Every CUDA call stays on the calling
thread: a worker only reads host rows and writes the pinned buffer of a slot whose last copy has
left. Each slot holds a batch in pinned and in device memory, so a background uploader takes
READ_AHEAD + 2 batches of each. Why several: on an H200's host one thread took 0.31 ms to read a
medium batch (3.2 MB) into pinned memory, a tf32 step 0.15 ms; splitting one batch over threads
cost more in hand-overs than it saved, reading several at once does not.

Consecutive small batches travel together, up to GROUP_BYTES (the uploader's ``batches`` of
them to a start): one read, one copy and one hand-over for the group, whose steps then read
their rows of one device buffer, so what a start costs besides its bytes is paid once for the
group, not once a batch.

The CUDA calls go through ``runtime`` (``CupyRuntime`` on a GPU; the tests pass a stand-in that
records them), so the order of waits is checked without a device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

SLOTS = 2
#: Batches read at once by the workers of a background uploader.
READ_AHEAD = 3
BACKGROUND_SLOTS = READ_AHEAD + 2  # READ_AHEAD being filled, one crossing, one being read
#: The smallest start (bytes of x and y: a batch, or a group of them) ``upload_thread`` reads on
#: workers; smaller ones are read on the calling thread. On an H200's host a hand-over to a
#: worker and back cost about 0.07 ms (small's 2.4 KB batches: 0.145 ms a streamed step with
#: workers, 0.069 without), what one thread takes to read about 0.7 MB (medium's 3.2 MB batch:
#: 0.31 ms); medium gained (0.22 ms a step with workers against 0.41 without), and so did large.
WORKER_MIN_BYTES = 1 << 20
#: Consecutive batches are carried together by one start up to this many bytes (x and y), so
#: what a start costs besides its bytes (its hand-over, the copy's calls, the events) is shared:
#: on an H200's host small's streamed step took 0.069-0.093 ms against 0.033 resident.
#: Measured on a 2-core Xeon (Streamed.feed, shuffled, a stand-in runtime: host work only), a
#: batch at a time against grouped, ms a batch: 300 x 2 batches (218 a start) 0.0225 against
#: 0.0044; 32 x 784 (10) 0.0287 against 0.0204; 64 x 784 (5) 0.0415 against 0.0373; 128 x 784
#: (2) 0.072 against 0.076. Groups of 4-16 MiB were slower there, up to 1.6x with workers
#: (bigger reads, colder caches), so batches of 1 MiB or more (medium's, large's) go alone, read
#: on the workers (WORKER_MIN_BYTES) where ``upload_thread`` is on.
GROUP_BYTES = 1 << 20


def batch_shapes(rows: int, x_tail: tuple[int, ...], x_dtype: Any, y_tail: tuple[int, ...] | None,
                 y_dtype: Any) -> list[tuple[tuple[int, ...], Any]]:
    """(shape, dtype) of a batch's x and, where there are labels, y: what a slot holds."""
    shapes = [((rows, *x_tail), x_dtype)]
    if y_tail is not None:
        shapes.append(((rows, *y_tail), y_dtype))
    return shapes


def batch_bytes(rows: int, x_tail: tuple[int, ...], x_dtype: Any, y_tail: tuple[int, ...] | None,
                y_dtype: Any) -> int:
    """Bytes of a batch of ``rows`` rows: its x and, where there are labels, y."""
    return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype
               in batch_shapes(rows, x_tail, x_dtype, y_tail, y_dtype))


def batches_per_start(rows: int, x_tail: tuple[int, ...], x_dtype: Any,
                      y_tail: tuple[int, ...] | None, y_dtype: Any, most: int) -> int:
    """How many batches of ``rows`` rows one start carries: as many as fit GROUP_BYTES, at least
    one, at most ``most`` (the data's count of them)."""
    one = batch_bytes(rows, x_tail, x_dtype, y_tail, y_dtype)
    return max(1, min(most, GROUP_BYTES // max(one, 1)))


def worth_workers(rows: int, x_tail: tuple[int, ...], x_dtype: Any,
                  y_tail: tuple[int, ...] | None, y_dtype: Any) -> bool:
    """Whether starts of ``rows`` rows are big enough to read on workers (WORKER_MIN_BYTES)."""
    return batch_bytes(rows, x_tail, x_dtype, y_tail, y_dtype) >= WORKER_MIN_BYTES


class CupyRuntime:
    """Streams, events, pinned and device buffers, from CuPy."""

    def __init__(self, cupy: Any) -> None:
        import cupyx

        self.cupy, self.cupyx = cupy, cupyx

    def stream(self) -> Any:
        return self.cupy.cuda.Stream(non_blocking=True)

    def event(self) -> Any:
        return self.cupy.cuda.Event(disable_timing=True)

    def current_stream(self) -> Any:
        return self.cupy.cuda.get_current_stream()

    def using(self, stream: Any) -> Any:
        """A context in which ``stream`` is the current stream (CuPy's streams are such)."""
        return stream

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cupyx.empty_pinned(shape, dtype=dtype)

    def device(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.cupy.empty(shape, dtype=dtype)

    def copy(self, device: Any, host: np.ndarray, stream: Any) -> None:
        device.set(host, stream=stream)  # from pinned memory: asynchronous on ``stream``


class Slot:
    """One start (a batch, or a group) in flight: its buffers and the two events that guard
    them."""

    def __init__(self, runtime: Any, shapes: list[tuple[tuple[int, ...], Any]]) -> None:
        self.host = [runtime.pinned(shape, dtype) for shape, dtype in shapes]
        self.device = [runtime.device(shape, dtype) for shape, dtype in shapes]
        self.copied, self.consumed = runtime.event(), runtime.event()
        self.copying = self.reading = False  # whether each event has been recorded yet
        self.last: Ticket | None = None  # the batch it holds or last held


def _starts_at(array: np.ndarray, host: np.ndarray) -> bool:
    """Whether ``array`` is the first rows of ``host`` (written there by the read)."""
    return array.__array_interface__["data"][0] == host.__array_interface__["data"][0] \
        and array.dtype == host.dtype and array.flags.c_contiguous


class Ticket:
    """One batch handed to ``start``: its slot, its rows once read, and whether its copy is queued."""

    def __init__(self, slot: Slot, filled: Future) -> None:
        self.slot, self.filled, self.sent = slot, filled, False


class PinnedUploader:
    """``start(read)`` / ``finish(ticket)`` / ``release(ticket)`` over pinned slots; ``close()``
    when done (it waits for the worker, if any). A start carries up to ``batches`` batches of
    ``rows`` rows (``self.rows`` rows in all)."""

    def __init__(self, runtime: Any, rows: int, x_tail: tuple[int, ...], x_dtype: Any,
                 y_tail: tuple[int, ...] | None, y_dtype: Any, batches: int = 1,
                 background: bool = False) -> None:
        rows *= batches
        shapes = batch_shapes(rows, x_tail, x_dtype, y_tail, y_dtype)
        self.runtime, self.rows, self.batches = runtime, rows, batches
        self.stream = runtime.stream()
        self.slots = [Slot(runtime, shapes) for _ in range(BACKGROUND_SLOTS if background else SLOTS)]
        self.next = 0
        #: Batches the caller starts before it hands the first of them over.
        self.ahead = READ_AHEAD if background else 1
        self.worker = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="gpunn-upload") \
            if background else None

    def start(self, read: Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray | None]]
              ) -> Ticket:
        """Begin a batch or a group of them: ``read(out)`` gives their host rows (x, y or
        None), written straight into ``out`` (the slot's pinned buffers, x's then y's) where it
        can; read on a worker with ``background``, else here, where the copy to the device is
        queued at once."""
        slot = self.slots[self.next]
        self.next = (self.next + 1) % len(self.slots)
        if slot.last is not None:
            self._send(slot.last)  # a batch started and never handed over still crosses first
        if slot.copying:
            slot.copied.synchronize()  # the host buffer is free once its last copy has left it
            slot.copying = False
        if self.worker is None:
            filled: Future = Future()
            filled.set_result(self._fill(slot, read))
            slot.last = Ticket(slot, filled)
            self._send(slot.last)
        else:
            slot.last = Ticket(slot, self.worker.submit(self._fill, slot, read))
        return slot.last

    def _fill(self, slot: Slot, read: Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray | None]]
              ) -> tuple[int, int]:
        """Read the batch into the slot's pinned buffers: (rows, arrays)."""
        x, y = read(slot.host)
        n = x.shape[0]
        if n > self.rows:
            raise ValueError(f"a batch of {n} rows does not fit this uploader's {self.rows}")
        arrays = [x] if y is None else [x, y]
        for host, array in zip(slot.host, arrays):
            if not _starts_at(array, host):  # rows the read did not write there itself
                np.copyto(host[:n], array)
        return n, len(arrays)

    def _send(self, ticket: Ticket) -> None:
        """Queue the batch's copy to the device (once its rows are in the pinned buffer)."""
        if ticket.sent:
            return
        n, count = ticket.filled.result()  # the worker's error, if it had one, is raised here
        slot = ticket.slot
        if slot.reading:  # the device buffer is free once the step that read it has run
            self.stream.wait_event(slot.consumed)
        for device, host in zip(slot.device, slot.host[:count]):
            self.runtime.copy(device[:n], host[:n], self.stream)
        slot.copied.record(self.stream)
        slot.copying = ticket.sent = True

    def finish(self, ticket: Ticket) -> tuple[Any, Any]:
        self._send(ticket)
        slot, (n, _) = ticket.slot, ticket.filled.result()
        self.runtime.current_stream().wait_event(slot.copied)
        x = slot.device[0][:n]
        return x, slot.device[1][:n] if len(slot.device) > 1 else None

    def release(self, ticket: Ticket) -> None:
        ticket.slot.consumed.record(self.runtime.current_stream())
        ticket.slot.reading = True

    def close(self) -> None:
        """Wait for the worker's last read (a batch never handed over, after an error) and stop it."""
        if self.worker is not None:
            self.worker.shutdown(wait=True, cancel_futures=True)
