"""Timing a call's device work: how the CuPy backend measures one way of doing a thing against
another (an epilogue against separate kernels, one cuBLASLt algorithm against the next).

The timed calls are queued behind ``hold`` (a kernel that keeps the device busy, as
``launch.Kernels.hold_device``), so the events time the device's work, as a replayed CUDA graph
runs it, and not the host's launches: a way that is one call where another is three would
otherwise win wherever launching is slower than computing, whatever the device takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TIMED_CALLS = 10
#: The longest hold (seconds): the timed calls queue far faster than this.
MAX_HOLD_S = 0.05


def device_ms(cupy: Any, fn: Callable[[], Any], hold: Callable[[float], None] | None,
              calls: int = TIMED_CALLS) -> float:
    """Device milliseconds for ``calls`` calls of ``fn`` after one warm-up call, queued behind a
    hold that outlasts their queueing (no hold when ``hold`` is None)."""
    fn()
    cupy.cuda.get_current_stream().synchronize()
    queued = time.perf_counter()
    fn()  # how long the host takes to queue a call, now that it is warm
    queued = time.perf_counter() - queued
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    if hold is not None:
        hold(min(MAX_HOLD_S, 2 * calls * queued + 1e-3))
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end)
