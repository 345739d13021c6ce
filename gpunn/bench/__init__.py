"""``gpunn bench``: training-step throughput of gpunn's backends against PyTorch and JAX, side by
side, on the workloads of the project's performance goals.

Every contender trains the same network from the same initial weights on the same data with the
same optimizer (SGD) and precision; they are interleaved repeat by repeat in one process, so drift
on a shared machine hits all alike, and the GEMM ceiling is measured between them, with the
step's GEMMs alone beside them (a floor, not a contender). Results: a table, and optionally
JSON (schema: ``SCHEMA``), Markdown and a PNG chart.

workloads.py (what is trained), contenders.py (who trains it), book.py (the book's whole run),
ops.py (``--ops``: where gpunn's step spends its time, op by op), suite.py (measuring, and the
command), report.py (schema, Markdown, chart).
"""

from __future__ import annotations

from . import ops
from .book import book_run
from .contenders import Run, Skip, contenders, gpunn_run, numpy_book_run, step_gemms_run
from .ops import op_profile
from .report import SCHEMA, markdown, plot
from .suite import gemm_ceiling, main, run_suite, time_steps
from .workloads import BOOK_EPOCHS, LR, WORKLOADS, Workload, initial_params, workload_data

__all__ = ["BOOK_EPOCHS", "LR", "SCHEMA", "WORKLOADS", "Run", "Skip", "Workload", "book_run",
           "contenders", "gemm_ceiling", "gpunn_run", "initial_params", "main", "markdown",
           "numpy_book_run", "op_profile", "ops", "plot", "run_suite", "step_gemms_run",
           "time_steps", "workload_data"]
