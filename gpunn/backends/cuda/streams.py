"""A second stream for the work a training step's backward pass puts aside (``Backend.aside``):
each Dense layer's weight and bias gradients, which nothing below reads. The gradient handed down
stays on the current stream, where the layers below wait for it; the weight gradients run beside
it. Why: a GEMM of medium's size (1024 x 1024 from 1024 rows) gives cuBLAS too few tiles to fill
an H200's 132 SMs, and the two GEMMs of a layer's backward need not wait for each other.

Work put aside is forked from the current stream where it is put aside (an event recorded there,
waited for on the side stream), so it starts after everything before it, and joined back when the
pass ends (an event recorded on the side stream, waited for on the current one), so everything
after it waits for all of it. Inside a capture the two waits become edges of the graph, and the
side stream is part of the capture from its first wait to the join.

The stream calls go through ``runtime`` (``transfer.CupyRuntime`` on a GPU; the tests pass a
stand-in that records them), so their order is checked without a device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class SideStream:
    """``run(work)`` forks ``work`` onto the side stream; ``join()`` makes the stream it was forked
    from wait for all of it. ``make()`` (outside a capture) creates the stream and hands it to
    ``prepare``, which gives the GEMM libraries a handle and a workspace of its own there (two
    GEMMs that may run at once must not share one)."""

    def __init__(self, runtime: Any, prepare: Callable[[Any], None] = lambda stream: None) -> None:
        self.runtime, self.prepare = runtime, prepare
        self.stream: Any = None  # made by make()
        self.joins: Any = None  # the stream work was forked from, until it is joined back

    @property
    def made(self) -> bool:
        return self.stream is not None

    def make(self) -> None:
        if self.stream is None:
            stream = self.runtime.stream()
            self.prepare(stream)
            self.stream = stream

    def run(self, work: Callable[[], Any]) -> None:
        """Queue ``work`` on the side stream, after everything queued on the current one."""
        current = self.runtime.current_stream()
        forked = self.runtime.event()
        forked.record(current)
        self.stream.wait_event(forked)
        self.joins = current  # joined back even if ``work`` fails part way
        with self.runtime.using(self.stream):
            work()

    def join(self) -> None:
        """Make the stream work was forked from wait for everything queued on the side stream."""
        if self.joins is None:
            return
        done = self.runtime.event()
        done.record(self.stream)
        self.joins.wait_event(done)
        self.joins = None
