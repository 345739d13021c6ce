"""Timing a call's device work: how the CuPy backend measures one way of doing a thing against
another (an epilogue against separate kernels, one cuBLASLt algorithm against the next).

The timed calls are queued behind ``hold`` (a kernel that keeps the device busy, as
``launch.Kernels.hold_device``), so the events time the device's work, as a replayed CUDA graph
runs it, and not the host's launches: a way that is one call where another is three would
otherwise win wherever launching is slower than computing, whatever the device takes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("gpunn")

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


class Choices:
    """Per problem, a way of doing it decided once, by device time (``time``), the first time
    the problem comes outside a capture (a planned step's warm-up); where a way fails outright
    the other runs, said once in the log. What is shared by the epilogue choice (epilogues.py)
    and ``Faster``."""

    def __init__(self, cupy: Any, hold: Callable[[float], None] | None = None) -> None:
        self.cupy = cupy
        self.hold = hold  # keeps the device busy for the seconds given (launch.Kernels.hold_device)
        #: problem -> whether the way that is not the fallback runs
        self.decisions: dict[tuple, bool] = {}
        #: problem -> (that way's ms, the fallback's ms) for TIMED_CALLS calls each, where both
        #: were measured (benchmarks/gemm_tuning.py reports them)
        self.times: dict[tuple, tuple[float, float]] = {}
        self.said_failed = False

    def capturing(self) -> bool:
        """Whether a graph is being recorded now (nothing is timed then)."""
        return self.cupy.cuda.get_current_stream().is_capturing()

    def time(self, fn: Callable[[], Any]) -> float:
        """Device milliseconds for TIMED_CALLS calls of ``fn``, queued behind the hold."""
        return device_ms(self.cupy, fn, self.hold)

    def failed(self, what: str, instead: str, exc: Exception) -> None:
        """Log, the first time only, that ``what`` failed and ``instead`` runs where it did."""
        if not self.said_failed:
            self.said_failed = True
            _log.warning("gpunn: %s failed (%s: %s); using %s where it did", what,
                         type(exc).__name__, exc, instead)


class Faster(Choices):
    """Per problem, whether a kernel of ours ran faster than the path it stands in for (a GEMM
    through cuBLAS and the passes after it), measured once, the first time the problem comes
    outside a capture (a planned step's warm-up), by device time; nothing is timed inside a
    capture, where the other path runs until then. Both ways write the same outputs from the same
    inputs, so running each a few times to time them changes nothing. Where ours fails (a launch
    the device refuses), the other way runs from then on, said once in the log. ``prefer`` True
    or False fixes the answer instead (the CUDA-on-CPU tests, which have no device to time on)."""

    def __init__(self, cupy: Any, hold: Callable[[float], None] | None = None,
                 prefer: bool | None = None) -> None:
        super().__init__(cupy, hold)
        self.prefer = prefer

    def run(self, problem: tuple, ours: Callable[[], Any], theirs: Callable[[], Any]) -> bool:
        """Run ``ours`` or ``theirs``, whichever measured faster for ``problem``; returns whether
        ours ran."""
        faster = self.prefer if self.prefer is not None else self.decisions.get(problem)
        if faster is None:
            if self.capturing():
                theirs()
                return False
            try:
                ours_ms = self.time(ours)
            except Exception as exc:  # a launch the device refuses: the other way, said once
                self.failed("a kernel of gpunn's", "the GEMM path", exc)
                faster = self.decisions[problem] = False
            else:
                self.times[problem] = ours_ms, self.time(theirs)
                faster = self.decisions[problem] = ours_ms < self.times[problem][1]
        (ours if faster else theirs)()
        return faster
