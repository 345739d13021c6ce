"""Batches from host memory to the GPU while it computes: what ``fit`` uses for data too big to
keep on the device.

Two slots, each a pinned host buffer and a device buffer. ``start`` fills a slot's pinned buffer
(after its previous copy has left it) and queues the copy to its device buffer on a copy stream
(after the step that last read that device buffer); ``finish`` makes the compute stream wait for
the copy; ``release`` marks where the step that read it was queued. So batch i + 1 crosses the
bus while step i runs, and no buffer is overwritten while something still reads it.

The CUDA calls go through ``runtime`` (``CupyRuntime`` on a GPU; the tests pass a stand-in that
records them), so the order of waits is checked without a device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SLOTS = 2


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

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cupyx.empty_pinned(shape, dtype=dtype)

    def device(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.cupy.empty(shape, dtype=dtype)

    def copy(self, device: Any, host: np.ndarray, stream: Any) -> None:
        device.set(host, stream=stream)  # from pinned memory: asynchronous on ``stream``


class Slot:
    """One batch in flight: its buffers and the two events that guard them."""

    def __init__(self, runtime: Any, shapes: list[tuple[tuple[int, ...], Any]]) -> None:
        self.host = [runtime.pinned(shape, dtype) for shape, dtype in shapes]
        self.device = [runtime.device(shape, dtype) for shape, dtype in shapes]
        self.copied, self.consumed = runtime.event(), runtime.event()
        self.copying = self.reading = False  # whether each event has been recorded yet


class PinnedUploader:
    """``start(x, y)`` / ``finish(ticket)`` / ``release(ticket)`` over two pinned slots."""

    def __init__(self, runtime: Any, rows: int, x_tail: tuple[int, ...], x_dtype: Any,
                 y_tail: tuple[int, ...] | None, y_dtype: Any) -> None:
        shapes = [((rows, *x_tail), x_dtype)]
        if y_tail is not None:
            shapes.append(((rows, *y_tail), y_dtype))
        self.runtime, self.rows = runtime, rows
        self.stream = runtime.stream()
        self.slots = [Slot(runtime, shapes) for _ in range(SLOTS)]
        self.next = 0

    def start(self, x: np.ndarray, y: np.ndarray | None) -> tuple[Slot, int]:
        n = x.shape[0]
        if n > self.rows:
            raise ValueError(f"a batch of {n} rows does not fit this uploader's {self.rows}")
        slot = self.slots[self.next]
        self.next = (self.next + 1) % SLOTS
        if slot.copying:
            slot.copied.synchronize()  # the host buffer is free once its last copy has left it
        arrays = [x] if y is None else [x, y]
        for host, array in zip(slot.host, arrays):
            np.copyto(host[:n], array)
        if slot.reading:  # the device buffer is free once the step that read it has run
            self.stream.wait_event(slot.consumed)
        for device, host in zip(slot.device, slot.host[:len(arrays)]):
            self.runtime.copy(device[:n], host[:n], self.stream)
        slot.copied.record(self.stream)
        slot.copying = True
        return slot, n

    def finish(self, ticket: tuple[Slot, int]) -> tuple[Any, Any]:
        slot, n = ticket
        self.runtime.current_stream().wait_event(slot.copied)
        x = slot.device[0][:n]
        return x, slot.device[1][:n] if len(slot.device) > 1 else None

    def release(self, ticket: tuple[Slot, int]) -> None:
        slot, _ = ticket
        slot.consumed.record(self.runtime.current_stream())
        slot.reading = True
