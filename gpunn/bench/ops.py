"""Where gpunn's training step spends its time, op by op (``gpunn bench --ops``).

The step's device work (what a planned step records, or the eager step) runs eagerly with every
call of the backend's methods timed: on the CPU by the clock around the call, on a GPU by CUDA
events recorded on the stream before and after it and read after one wait at the end, so the
timing adds no wait of its own. On a GPU the device is held busy (``Backend.hold``) until the
host has queued all the steps, so the events time the device's work, not the host's launches
(which a replayed graph does not pay). An op that calls others (``dense_forward`` calls ``gemm``)
is charged for its own work only: its time less theirs. What no op accounts for (the Python
between calls on the CPU, the gaps between kernels on a GPU) is a row of its own. The timing
costs a little too, so on a tiny step the rows add up to more than the bench's step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import datasets
from ..training import steps as paths
from .contenders import book_model, gpunn_model
from .workloads import Workload, initial_params, workload_data

#: What the "(between ops)" row is called.
BETWEEN = "(between ops)"
_MISSING = object()


class HostClock:
    """The CPU's clock: an op's work is done when its call returns."""

    def mark(self) -> float:
        return time.perf_counter()

    @staticmethod
    def seconds(start: float, end: float) -> float:
        return end - start

    def settle(self) -> None:
        """Nothing to wait for."""


class DeviceClock:
    """CUDA events on the current stream: when the device got to each mark."""

    def __init__(self) -> None:
        import cupy

        self.cupy = cupy

    def mark(self) -> Any:
        event = self.cupy.cuda.Event()
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return self.cupy.cuda.get_elapsed_time(start, end) / 1e3

    def settle(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()


def clock_for(bk: Any) -> HostClock | DeviceClock:
    """The clock that times ``bk``'s work: the host's for NumPy, CUDA events for CuPy."""
    return HostClock() if bk.xp.__name__ == "numpy" else DeviceClock()


class Calls:
    """Timed calls, each with the call it was made from (None at the top)."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.records: list[list[Any]] = []  # [name, start mark, end mark, parent index]
        self._open: list[int] = []

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with each call recorded under ``name``."""
        def call(*args: Any, **kwargs: Any) -> Any:
            record = [name, self.clock.mark(), None, self._open[-1] if self._open else None]
            self._open.append(len(self.records))
            self.records.append(record)
            try:
                return fn(*args, **kwargs)
            finally:
                self._open.pop()
                record[2] = self.clock.mark()
        return call

    def own_seconds(self) -> dict[str, tuple[int, float]]:
        """name -> (calls, seconds of its own work: each call's time less its inner calls')."""
        spans = [self.clock.seconds(start, end) for _, start, end, _ in self.records]
        own = list(spans)
        for (_, _, _, parent), span in zip(self.records, spans):
            if parent is not None:
                own[parent] -= span
        totals: dict[str, tuple[int, float]] = {}
        for (name, *_), seconds in zip(self.records, own):
            calls, total = totals.get(name, (0, 0.0))
            totals[name] = (calls + 1, total + seconds)
        return totals


def op_profile(w: Workload, name: str, backend: str, precision: str, device: str,
               steps: int | None = None, warmup: int = 3) -> dict[str, Any]:
    """gpunn's step on workload ``w`` (called ``name``): its time per step, eager, and each
    backend op's share, as a JSON-ready dict (the schema's ``op_profiles`` item). ``steps``:
    how many are timed, by default 20 on a CPU and 6 on a GPU, where all of them wait in the
    stream's queue at once, two events a call besides the kernels (some 70 entries a step for
    medium; launches are reported to block past about 1000 queued, and the device would then
    start before the host is done)."""
    model = gpunn_model(w, initial_params(w.sizes), backend, precision)
    X, y = workload_data(w)
    run = model.prepare_step(X, y)
    for _ in range(warmup):  # planned, buffers allocated, epilogues chosen
        run()
    step = model.steps.get(w.batch, 1)
    work = getattr(step, "body", step.run)  # a planned step's device work, not its graph
    bk = model.backend
    queued = time.perf_counter()
    work()
    queued = time.perf_counter() - queued  # the host's time to queue a step (all of it on a CPU)
    bk.synchronize()
    clock = clock_for(bk)
    if steps is None:
        steps = 20 if isinstance(clock, HostClock) else 6
    calls = Calls(clock)
    # On a GPU the device waits until the host has queued every step (timed calls take longer
    # to queue than plain ones: hence the margin), then runs them back to back. Held before the
    # ops are wrapped: the hold is the profile's, not the step's.
    bk.hold(4 * queued * steps + 0.01)
    saved = _time_every_op(bk, calls)
    try:
        first = clock.mark()
        for _ in range(steps):
            work()
        last = clock.mark()
        clock.settle()
    finally:
        _restore(bk, saved)
    step_s = clock.seconds(first, last) / steps
    ops = [{"op": op, "calls": n / steps, "ms": s / steps * 1e3, "share": s / steps / step_s}
           for op, (n, s) in calls.own_seconds().items()]
    ops.sort(key=lambda row: -row["ms"])
    between = step_s - sum(row["ms"] for row in ops) / 1e3
    ops.append({"op": BETWEEN, "calls": 0.0, "ms": between * 1e3, "share": between / step_s})
    return {"workload": name, "impl": f"gpunn-{backend}", "device": device,
            "precision": precision, "path": step.path, "step_ms": step_s * 1e3, "steps": steps,
            "ops": ops}


def book_profile(backend: str, device: str, epochs: int = 2048) -> dict[str, Any]:
    """The book's run in ``fit`` with the one-kernel trainer on ``backend``: its time per epoch
    (wall time over ``epochs`` full-batch epochs), and the trainer's share: one launch of
    ONE_KERNEL_EPOCHS_PER_LAUNCH epochs timed by the device's clock. The rest is the host's (each
    launch's metrics read, its checks, the history). As a JSON-ready ``op_profiles`` item."""
    X, y = datasets.spiral_data(samples=100, classes=3, seed=0)
    model = book_model(backend, True, len(y))
    launch = paths.ONE_KERNEL_EPOCHS_PER_LAUNCH
    if epochs < launch:
        raise ValueError(f"epochs must be at least {launch} (one whole launch); got {epochs}")
    bk = model.backend
    model.fit(X, y, epochs=100, batch_size=None, verbose=0)  # compiled, buffers allocated
    bk.synchronize()
    total = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=None, verbose=0)
    bk.synchronize()
    total = time.perf_counter() - total
    step = model.steps.get(len(y), launch)  # made by the fit: its data is loaded
    clock = clock_for(bk)
    start = clock.mark()
    step.run()
    end = clock.mark()
    clock.settle()
    epoch_ms, trainer_ms = total / epochs * 1e3, clock.seconds(start, end) / launch * 1e3
    return {"workload": "book", "impl": f"gpunn-{backend}-one-kernel", "device": device,
            "precision": "fp32", "path": step.path, "step_ms": epoch_ms, "steps": epochs,
            "ops": [{"op": "train_in_one_kernel", "calls": 1 / launch, "ms": trainer_ms,
                     "share": trainer_ms / epoch_ms},
                    {"op": BETWEEN, "calls": 0.0, "ms": epoch_ms - trainer_ms,
                     "share": 1 - trainer_ms / epoch_ms}]}


def _time_every_op(bk: Any, calls: Calls) -> dict[str, Any]:
    """Put a timed wrapper over each public method of ``bk`` (on the instance, which the model's
    layers, loss and optimizer share); returns what the instance held before."""
    saved = {}
    for attr in dir(type(bk)):
        if attr.startswith("_") or attr == "synchronize" \
                or not callable(getattr(type(bk), attr, None)) \
                or isinstance(getattr(type(bk), attr), type):
            continue
        saved[attr] = bk.__dict__.get(attr, _MISSING)
        setattr(bk, attr, calls.timed(attr, getattr(bk, attr)))
    return saved


def _restore(bk: Any, saved: dict[str, Any]) -> None:
    for attr, before in saved.items():
        if before is _MISSING:
            delattr(bk, attr)
        else:
            setattr(bk, attr, before)
