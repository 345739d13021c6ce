"""What tuning the GEMMs (``model.backend.tune_gemms``) finds on a GPU (needs CuPy, nvmath-python
and a device).

    python benchmarks/gemm_tuning.py [--workloads medium,large] [--precision fp32,tf32,bf16]

For each workload and precision, one bench step of gpunn's network with ``tune_gemms`` on, then
each cuBLASLt problem it tuned: the epilogue, the column-major sizes m, n, k and transposes, the
operand type, how many algorithms the heuristics offered (and how much of the device their
first fills: its waves), how many split-K variants were added, and each candidate's device time
for ``timing.TIMED_CALLS`` calls (the heuristics' first choice first, then the split-K variants,
each with its parts and reduction, ``/k4c``: k in 4 parts added up in the compute type in the
workspace, ``i``: in place, then cuBLAS's own for plain GEMMs, the one kept marked). What
``gpunn bench`` shows as gpunn-cupy (tuned, the default) against gpunn-cupy-untuned, this shows
GEMM by GEMM. Then each product of a layer with few outputs that
was timed in the narrow kernels against the GEMM path (the output layer's forward, and its weight
and bias gradients), each tf32 weight gradient timed from a transposed copy of an operand
against the GEMM as it is (the copy's time included), and each epilogue choice the step timed
(a cuBLASLt epilogue against the GEMM and the separate passes, by layer: the forward's bias,
ReLU and mask, and the backward's ReLU and bias gradients), the faster marked.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import numpy as np

from gpunn.backends import get_backend
from gpunn.backends.bf16 import BF16_BITS
from gpunn.bench import initial_params, workload_data
from gpunn.bench.contenders import Skip, gpunn_run
from gpunn.bench.workloads import WORKLOADS

EPILOGUES = {1: "plain", 4: "bias", 6: "relu_bias", 134: "relu_aux_bias", 152: "drelu_bgrad"}
REDUCTIONS = {1: "i", 2: "c", 4: "o"}  # cublasLtReductionScheme_t: in place, compute type, output


def type_name(dtype: np.dtype) -> str:
    return "bf16" if dtype == BF16_BITS else dtype.name


def faster_of(name: str, ms: float, other: str, other_ms: float) -> str:
    """Two timings side by side, the faster starred (the first on a tie, as the choices do)."""
    return (f"{name} {ms:.4f}{'*' if ms < other_ms else ''}, "
            f"{other} {other_ms:.4f}{'*' if ms >= other_ms else ''}")


def split_of(parts: int, reduction: int) -> str:
    """A candidate's split over k: '' for none, else e.g. '/k4c' (4 parts, added up in the
    compute type, in the workspace) or '/k2i' (in place, in D)."""
    return "" if parts == 1 else f"/k{parts}{REDUCTIONS.get(reduction, reduction)}"


def tuned(workload: str, precision: str) -> list[str]:
    """The report lines of the problems one tuned step of ``workload`` planned."""
    backend = get_backend("cupy")  # its problems and choices are shared by every model's
    problems, narrow = backend.epilogues.problems, backend.narrow_choice.times
    epilogues, transposes = backend.epilogue_choice.times, backend.transpose_choice.times
    before, narrow_before, epilogues_before = set(problems), set(narrow), set(epilogues)
    transposes_before = set(transposes)
    w = WORKLOADS[workload]
    X, y = workload_data(w)
    try:
        run = gpunn_run("cupy", tune_gemms=True)(w, initial_params(w.sizes), X, y, precision, "gpu")
    except Skip as why:
        return [f"{workload} {precision}: skipped ({why})"]
    for _ in range(2):  # tuned in the first (eager) step
        run.step()
    run.sync()
    lines = []
    for spec, problem in problems.items():
        if spec in before or spec.candidates == 1:
            continue
        kept = -1 if problem.declined else problem.chosen
        times = " ".join((f"{problem.timings[i]:.4f}{'*' if i == kept else ''}"
                          if i in problem.timings else "failed") + split_of(*problem.splits[i])
                         for i in range(problem.count))
        waves = float(problem.results["waves_count"][0])
        lines.append(f"{workload:6} {precision} {EPILOGUES.get(spec.epilogue, spec.epilogue):13} "
                     f"m={spec.m} n={spec.n} k={spec.k} T={int(spec.trans_a)}{int(spec.trans_b)} "
                     f"{type_name(spec.operands)}"  # bf16 operands: into float32 or bf16
                     f"{' -> ' + type_name(spec.out) if spec.operands == BF16_BITS else ''}: "
                     f"{problem.offered} offered (waves {waves:.2f}), "
                     f"{problem.count - problem.offered} split-K; ms {times}"
                     + ("" if problem.fallback_ms is None else
                        f"; cuBLAS {problem.fallback_ms:.4f}{'*' if problem.declined else ''}"))
    for problem, (ours, theirs) in narrow.items():
        if problem not in narrow_before:
            kind, inputs, outputs = problem[:3]
            lines.append(f"{workload:6} {precision} narrow {kind:12} {inputs[0]} rows, {inputs[1]} "
                         f"inputs, {outputs[1]} outputs: "
                         + faster_of("kernel ms", ours, "GEMM path", theirs))
    for problem, (copied, plain) in transposes.items():
        if problem not in transposes_before:
            _, (rows, n_in), (_, n_out) = problem
            lines.append(f"{workload:6} {precision} weight_grads from a transposed copy: {rows} "
                         f"rows, {n_in} inputs, {n_out} outputs: "
                         + faster_of("copy + GEMM ms", copied, "GEMM as it is", plain))
    for key, (fused, separate) in epilogues.items():
        if key not in epilogues_before:
            # (cupy_backend.py's keys) forward: kind, inputs' and weights' shapes, operand and
            # result types; dinputs: the gradient's and the weights' shapes, the types
            if key[0] == "forward":
                what, (rows, n_in), (_, n_out), types_ = key[1], key[2], key[3], key[4:6]
            else:
                what, (rows, n_out), (n_in, _), types_ = "drelu_bgrad", key[1], key[2], key[3:5]
            lines.append(f"{workload:6} {precision} epilogue {key[0]} {what:10} {rows} rows, "
                         f"{n_in} inputs, {n_out} outputs, {type_name(types_[0])} -> "
                         f"{type_name(types_[1])}: "
                         + faster_of("fused ms", fused, "separate", separate))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="medium,large")
    parser.add_argument("--precision", default="fp32,tf32,bf16")
    args = parser.parse_args()
    print("ms: device time of the timed calls of each algorithm, the heuristics' first choice "
          "first, then split-K variants (/k<parts><c: compute type, i: in place>), then (plain "
          "GEMMs) cuBLAS's own; * the one kept (narrow: kernel or GEMM path)")
    failed = False
    for workload in args.workloads.split(","):
        for precision in args.precision.split(","):
            try:
                lines = tuned(workload, precision)
            except Exception:  # the other cases still report (a lent GPU's time is short)
                failed = True
                lines = [f"{workload} {precision}: FAILED", traceback.format_exc().rstrip()]
            for line in lines:
                print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
