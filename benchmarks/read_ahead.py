"""How many batches the upload workers should read at once (``transfer.READ_AHEAD``), and how
many batches a start should carry (``transfer.GROUP_BYTES``), measured on a GPU's host (needs
CuPy and a device).

    python benchmarks/read_ahead.py [--workloads medium] [--precision tf32,bf16]
                                    [--workers 1,3,6] [--groups 1,4] [--repeats 3] [--seconds 0.3]

For each workload and precision: gpunn-cupy's step with its data on the device (resident), then
the streamed step (gpunn-cupy-streamed: the data in host memory, ``upload_thread`` on) with each
count of workers, over that many + 2 slots, and each count of batches to a start (the bench's
streamed data holds 4 batches); ms a step, the median of the repeats as ``gpunn bench`` times
them, and its speed as a fraction of resident's; and, over the same steps, the calling thread's
CPU time a step and its time a step in the uploader's ``finish`` (waiting for a read, queuing its
copy). Why: on an H200 (2026-11-27) with 3 workers, streamed medium steps took 0.19 ms in tf32
and in bf16, where resident ones took 0.14 and 0.11; one thread read a medium batch in 0.31 ms.
If the reads set that pace, ``finish`` takes the difference and more workers close the gap; if
the calling thread does (its CPU time near the step's), what each start costs there does (its
copy's calls and events, the hand-over) and more batches to a start help; if neither, the
device does.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any
from unittest.mock import patch

from gpunn.backends.cuda import transfer
from gpunn.backends.cuda.transfer import PinnedUploader
from gpunn.bench import initial_params, workload_data
from gpunn.bench.contenders import Run, Skip, gpunn_run, gpunn_streamed_run
from gpunn.bench.suite import time_steps
from gpunn.bench.workloads import WORKLOADS


def per_start(batches: int) -> Any:
    """Uploaders made inside carry up to ``batches`` batches to a start, whatever their bytes."""
    return patch.object(transfer, "batches_per_start",
                        lambda *shapes_and_most: min(batches, shapes_and_most[-1]))


def read_ahead(workers: int) -> Any:
    """Uploaders made inside read ``workers`` batches at once, over ``workers`` + 2 slots."""
    return patch.multiple(transfer, READ_AHEAD=workers, BACKGROUND_SLOTS=workers + 2)


class Counted:
    """A step that counts its calls."""

    def __init__(self, step) -> None:
        self.step, self.calls = step, 0

    def __call__(self) -> None:
        self.calls += 1
        self.step()


def finish_timed(spent: list[float]) -> Any:
    """Uploaders' ``finish`` adds its seconds to ``spent[0]`` inside."""
    finish = PinnedUploader.finish

    def timed(self, ticket):
        start = time.perf_counter()
        try:
            return finish(self, ticket)
        finally:
            spent[0] += time.perf_counter() - start

    return patch.object(PinnedUploader, "finish", timed)


def step_ms(make, workload: str, precision: str, repeats: int,
            seconds: float) -> tuple[float, float, float]:
    """A row's ms a step, the median over ``repeats`` (``make``: a bench row's factory); and
    over all its steps, the calling thread's CPU ms a step and its ms a step in ``finish``."""
    w = WORKLOADS[workload]
    X, y = workload_data(w)
    run = make(w, initial_params(w.sizes), X, y, precision, "gpu")
    step, in_finish = Counted(run.step), [0.0]
    try:
        with finish_timed(in_finish):
            cpu = time.thread_time()
            ms = statistics.median(time_steps(Run(step, run.sync, run.loss), seconds)
                                   for _ in range(repeats))
            cpu = time.thread_time() - cpu
        return ms, cpu / step.calls * 1e3, in_finish[0] / step.calls * 1e3
    finally:
        del run, step
        gc.collect()  # a streamed row's feed ends here, and its workers with it


def said(timed: tuple[float, float, float]) -> str:
    """What step_ms measured on the calling thread, in words."""
    _, cpu, in_finish = timed
    return f"calling thread {cpu:.4f} ms of CPU a step, {in_finish:.4f} ms in finish"


def report(workload: str, precision: str, workers: list[int], groups: list[int], repeats: int,
           seconds: float) -> list[str]:
    """Resident's ms a step, then each count of workers' and of batches to a start's streamed
    ms and fraction of its speed."""
    try:
        resident = step_ms(gpunn_run("cupy"), workload, precision, repeats, seconds)
    except Skip as why:
        return [f"{workload} {precision}: skipped ({why})"]
    lines = [f"{workload} {precision} resident: {resident[0]:.4f} ms; {said(resident)}"]
    for count in workers:
        for batches in groups:
            with read_ahead(count), per_start(batches):
                streamed = step_ms(gpunn_streamed_run("cupy", upload_thread=True), workload,
                                   precision, repeats, seconds)
            lines.append(f"{workload} {precision} streamed, {count} workers, {batches} batches a "
                         f"start: {streamed[0]:.4f} ms ({resident[0] / streamed[0]:.0%} of "
                         f"resident's speed); {said(streamed)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="medium")
    parser.add_argument("--precision", default="tf32,bf16")
    parser.add_argument("--workers", default="1,3,6")
    parser.add_argument("--groups", default="1,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    workers = [int(count) for count in args.workers.split(",")]
    groups = [int(count) for count in args.groups.split(",")]
    for name, counts, given in (("--workers", workers, args.workers), ("--groups", groups, args.groups)):
        if min(counts) < 1:
            parser.error(f"{name}: each count must be 1 or more; got {given}")
    for workload in args.workloads.split(","):
        for precision in args.precision.split(","):
            for line in report(workload, precision, workers, groups, args.repeats, args.seconds):
                print(line, flush=True)


if __name__ == "__main__":
    main()
