"""Where the one-kernel trainer's time goes on a GPU, phase by phase (needs CuPy and a device).

    python benchmarks/one_kernel_phases.py [--epochs N] [--compare OTHER.cu ...]

Trains the book's spiral network (Adam lr 0.05, decay 5e-7, the whole 300-sample batch) for
``--epochs`` (10,001: the book's run) with kernels.cu compiled with -DONE_KERNEL_PHASES, and
prints the run's seconds, the SM clock, and each phase's cycles and microseconds an epoch: the
spans between the PHASE_DONE markers of train_in_one_kernel. Each source is also timed built as
the backend builds it (no stamps: thread 0 then reads no clock), three runs. ``--compare`` adds
other versions of kernels.cu, e.g. ``git show REV:gpunn/backends/cuda/kernels.cu > old.cu``; their
phases are shown where they have the markers. The final parameters of each are compared with the
first source's: a different order of sums gives different bits, and over 10,001 epochs of Adam at
lr 0.05 those grow, so only a source that should give the same bits is checked this way.

kernels.cu itself is timed four ways (VARIANTS): its trainer built for the book's sizes (2, 64,
3), as the backend builds it, or for none (the sizes read at run time), each with its layers by
warps (the default) or a thread a column (-DONE_KERNEL_WARPS=0, the layout before 2026-11-27's
fourteenth session). The sizes change no arithmetic, so the third should give the first's bits;
the warps add in another order.

This is how the layers' tiling (rows_by_columns) and the capped stripes of block_tn were found
and measured on an H200 (2026-11-27, README's GPU section): the hidden layer and its gradient
had taken 45% of the epoch.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from gpunn import datasets
from gpunn.backends import cuda
from gpunn.bench.contenders import book_model

#: What ends at each PHASE_DONE(p) marker of train_in_one_kernel, in order.
PHASES = ("hidden layer", "logits (and softmax, up to 4 classes)", "softmax (over 4), loss sums",
          "dW2 and db2",
          "hidden gradient, db1 (dW1 too, up to 3 inputs)", "dW1 (over 3 inputs)", "update")
STAMPS = "-DONE_KERNEL_PHASES"
BOOK_SIZES = (2, 64, 3)  # the book's network: 2 inputs, 64 hidden, 3 classes
#: How kernels.cu's trainer is built for each timing: (what, for the book's sizes?, NVRTC options).
#: The first is the backend's; the third gives its bits (the same arithmetic), and the second and
#: fourth, a thread a column and the logits through shared memory, add in another order.
VARIANTS = (("built for the book's sizes, by warps (the backend's)", True, ()),
            ("built for the book's sizes, a thread a column", True, ("-DONE_KERNEL_WARPS=0",)),
            ("built for any size, by warps", False, ()),
            ("built for any size, a thread a column", False, ("-DONE_KERNEL_WARPS=0",)))


def phase_names(code: str) -> tuple[str, ...]:
    """The phases of a version of kernels.cu: PHASES where it has as many markers as this one,
    numbered otherwise (an older version: until 2026-11-27's eighth session, db2 and db1 were
    phases of their own, nine in all); none where it has no stamps."""
    found = re.search(r"#define ONE_KERNEL_PHASE_COUNT (\d+)", code)
    if not found or "PHASE_DONE(0)" not in code:
        return ()
    count = int(found.group(1))
    return PHASES if count == len(PHASES) else tuple(f"phase {p}" for p in range(count))


def run(code: str, stamps: bool, epochs: int, sized: bool = True,
        options: tuple[str, ...] = ()) -> tuple[float, np.ndarray, np.ndarray | None]:
    """(seconds, final parameters, the stamps' cycles or None) of the book's run on a fresh CuPy
    backend whose kernels are ``code``, compiled with the stamps or without and with ``options``;
    its trainer built for the book's sizes, as the backend builds it, or (``sized`` False) for
    none."""
    import cupy

    from gpunn.backends.cuda import launch
    from gpunn.backends.cupy_backend import CupyBackend

    X, y = datasets.spiral_data(samples=100, classes=3, seed=0)
    backend = CupyBackend()
    lookup = launch.compiled(cupy, ((STAMPS,) if stamps else ()) + options, code)
    backend.kernels = launch.Kernels(lookup if sized else
                                     lambda name, dtype=None, sizes=(): lookup(name, dtype), cupy)
    book_model(backend, True, len(y)).fit(X, y, epochs=100, batch_size=None, verbose=0)  # builds
    backend.synchronize()
    cycles = None
    if stamps:
        # the module the trainer is in (the book's model trains in float32)
        trainer = lookup.module(BOOK_SIZES if sized else (), np.float32)
        cycles = cupy.ndarray((len(phase_names(code)) + 2,), cupy.uint64,
                              memptr=trainer.get_global("one_kernel_phase_cycles"))
        cycles[...] = 0
    model = book_model(backend, True, len(y))
    start = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=None, verbose=0)
    backend.synchronize()
    seconds = time.perf_counter() - start
    params = np.concatenate([np.ravel(p) for p in model.get_params()])
    return seconds, params, None if cycles is None else cupy.asnumpy(cycles)


def report(name: str, code: str, epochs: int, reference: np.ndarray | None,
           sized: bool = True, options: tuple[str, ...] = ()) -> np.ndarray:
    times = []
    for _ in range(3):
        seconds, params, _ = run(code, False, epochs, sized, options)
        times.append(seconds)
    differs = "" if reference is None else \
        f"; final parameters differ from the first timing's by up to {np.abs(params - reference).max():.3g}"
    print(f"{name}: {epochs} epochs in {' '.join(f'{t:.4f}' for t in times)} s "
          f"(best {min(times) / epochs * 1e6:.2f} us an epoch){differs}")
    names = phase_names(code)
    if names:
        seconds, _, cycles = run(code, True, epochs, sized, options)
        mhz = cycles[-2] / max(int(cycles[-1]), 1) * 1e3
        print(f"  with the stamps: {seconds:.4f} s; in the kernel {cycles[-1] / epochs / 1e3:.2f} us, "
              f"{cycles[-2] / epochs:,.0f} cycles an epoch at {mhz:.0f} MHz")
        for phase, spent in zip(names, cycles):
            print(f"    {phase:48s} {spent / epochs:9,.0f} cycles {spent / epochs / mhz:7.2f} us")
    return params


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10_001)
    parser.add_argument("--compare", nargs="*", default=[], help="other kernels.cu files")
    args = parser.parse_args(argv)
    reference = None
    for name, sized, options in VARIANTS:
        params = report(f"kernels.cu, the trainer {name}", cuda.source(), args.epochs, reference,
                        sized, options)
        reference = params if reference is None else reference
    for path in args.compare:
        report(path, Path(path).read_text(), args.epochs, reference)


if __name__ == "__main__":
    main(sys.argv[1:])
