"""Measuring: every contender on every workload, interleaved repeat by repeat in one process, with
the GEMM ceiling measured between them; and the ``gpunn bench`` command."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..backends import available, cupy_problem, get_backend
from ..backends.bf16 import BF16_BITS
from ..backends.blas import describe, forced_kernel_warning, is_numpys, numpy_first
from ..distributed import mpiexec
from ..files import check_writable, write_atomic
from ..plot import require_matplotlib
from .book import book_run
from .contenders import Run, Skip, contenders
from .ops import book_profile, op_profile
from .report import (
    add_speedups,
    default_text,
    mark_defaults,
    markdown,
    noise_note,
    op_profile_text,
    peer_backend,
    plot,
    quartiles,
    row_text,
    speedup_text,
)
from .workloads import BOOK_EPOCHS, STEP_GEMMS, WORKLOADS, Workload, initial_params, workload_data


def time_steps(run: Run, seconds: float, min_steps: int = 3) -> float:
    """Mean ms per step over a run of steps that takes at least ``seconds`` (and ``min_steps``),
    waited for once at its end. A wait every few steps would empty the device's queue each time,
    a gap a training loop does not have (most of all for streamed steps, whose host copy then
    runs with no step queued behind it); so shorter runs first say how many steps fill
    ``seconds``."""
    run.step()
    run.sync()
    n = min_steps
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            run.step()
        run.sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return elapsed / n * 1e3
        # Aim 10% past ``seconds``, at most 100 times the steps just taken.
        n = max(n + 1, int(n * min(1.1 * seconds / max(elapsed, 1e-9), 100.0)))


def gemm_ceiling(device: str, precision: str, seconds: float) -> float:
    """TFLOP/s of a large GEMM with float32 results on this device (2048^3 on the CPU, 8192^3 on a
    GPU, its operands float32, or bfloat16 for "bf16")."""
    if device == "cpu":
        a = np.random.default_rng(1).standard_normal((2048, 2048)).astype(np.float32)
        out = np.empty_like(a)
        run = Run(lambda: np.matmul(a, a, out=out), lambda: None, lambda: 0.0)
        return 2 * 2048**3 / (time_steps(run, seconds) / 1e3) / 1e12
    import cupy as cp

    if precision != "fp32" and get_backend("cupy").why_not(precision):
        return 0.0  # not measurable here (its rows are skipped too): no ceiling fraction
    bk = get_backend("cupy").configured(precision=precision)
    a = cp.random.standard_normal((8192, 8192), dtype=cp.float32)
    out = cp.empty_like(a)
    if precision == "bf16":  # bfloat16 operands, float32 result, as a bf16 model's GEMMs
        a = bk.to_bf16(a, out=cp.empty(a.shape, BF16_BITS))
    ms = time_steps(Run(lambda: bk.gemm(a, a, out), bk.synchronize, lambda: 0.0), seconds)
    return 2 * 8192**3 / (ms / 1e3) / 1e12


def machine_info(device_names: dict[str, str], ceilings: dict[str, float]) -> dict[str, Any]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # a bare GPU image; gpunn's own install always has it
        def threadpool_info() -> list[dict[str, Any]]:
            return [{"internal_api": "unknown (threadpoolctl not installed)"}]

    versions = {"gpunn": __import__("gpunn").__version__, "numpy": np.__version__}
    for name in ("cupy", "numba", "torch", "jax"):  # numba: the compiled CPU paths
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    # "architecture": the BLAS kernel OpenBLAS chose (SkylakeX, Haswell, ...), which sets its
    # GEMM rate as much as the CPU does; "numpy": NumPy's own (listed first), whose GEMMs are
    # gpunn's on the CPU, where a peer's or SciPy's may be loaded too.
    blas = [{**{k: info.get(k) for k in ("internal_api", "version", "num_threads",
                                         "threading_layer", "architecture")},
             "numpy": is_numpys(info)}
            for info in numpy_first(threadpool_info())]
    return {"date": time.strftime("%Y-%m-%d"), "blas_warning": forced_kernel_warning(),
            "cpu": get_backend("numpy").device_name(), "cpu_cores": os.cpu_count() or 1,
            "gpu": device_names.get("gpu"), "python": platform.python_version(),
            "versions": versions, "blas": blas, "gemm_ceiling": ceilings}


def run_suite(workloads: list[str], backends: list[str], peers: list[str], precisions: list[str],
              repeats: int, seconds: float, check_steps: int = 3,
              log: Callable[[str], Any] = print, ops: bool = False) -> dict[str, Any]:
    """Measure every contender on every workload, interleaved; returns the JSON document. With
    ``ops``, also where gpunn's step spends its time, op by op (``op_profiles``)."""
    unknown = set(backends) - {"numpy", "cupy"}
    if unknown:
        raise ValueError(f"--backends: unknown backend {sorted(unknown)[0]!r}; choose from numpy, cupy")
    devices = (["cpu"] if "numpy" in backends else []) \
        + (["gpu"] if "cupy" in backends and "cupy" in available() else [])
    suite = Suite(backends, peers, repeats, seconds, check_steps, log, ops)
    if "cupy" in backends and "gpu" not in devices:
        suite.skip("gpunn-cupy", "*", str(cupy_problem()))
    device_names = {"cpu": get_backend("numpy").device_name()}
    if "gpu" in devices:
        device_names["gpu"] = get_backend("cupy").device_name()
    for name in workloads:
        for device in devices:
            if name == "book":
                suite.book(device)
            elif WORKLOADS[name].gpu_only and device == "cpu":
                suite.skip("*", name, "large runs only on a GPU")
            else:
                for precision in precisions:
                    if precision == "fp32" or device == "gpu":  # tf32 and bf16 are GPU precisions
                        suite.workload(name, device, precision)
    doc = {"machine": machine_info(device_names, suite.ceilings), "results": suite.results,
           "skipped": suite.skipped, "failed": suite.failed}
    if ops:
        doc["op_profiles"] = suite.op_profiles
    return doc


class Suite:
    """What ``run_suite`` gathers: result rows, skipped contenders, contenders that failed,
    GEMM ceilings, and with ``ops`` the op profiles of gpunn's steps."""

    def __init__(self, backends: list[str], peers: list[str], repeats: int, seconds: float,
                 check_steps: int, log: Callable[[str], Any], ops: bool = False) -> None:
        self.backends, self.peers, self.repeats, self.seconds = backends, peers, repeats, seconds
        self.check_steps, self.log, self.ops = check_steps, log, ops
        self.op_profiles: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.failed: list[dict[str, str]] = []
        self.ceilings: dict[str, float] = {}

    def skip(self, impl: str, workload: str, reason: str) -> None:
        entry = {"impl": impl, "workload": workload, "reason": reason}
        if entry not in self.skipped:  # every precision skips for the same reason
            self.skipped.append(entry)

    def fail(self, impl: str, workload: str, precision: str, exc: Exception) -> None:
        """A contender that raised: its traceback into the log, the error into ``failed``, and
        no row for it on that workload; the bench goes on with the others (a first run on a new
        GPU should still give every row that works) and ``gpunn bench`` exits 1."""
        self.failed.append({"impl": impl, "workload": workload, "precision": precision,
                            "error": f"{type(exc).__name__}: {exc}"})
        self.log(f"FAILED  {impl} on {workload} ({precision}):\n"
                 + "".join(traceback.format_exception(exc)).rstrip())

    def book(self, device: str) -> None:
        """The book's whole run for every contender that has a version of it."""
        rows = []
        for impl in contenders(self.backends, self.peers, device):
            if impl in ("numpy-book", "gpunn-cupy-separate", "gpunn-cupy-untuned",
                        "gpunn-cupy-gemms", "gpunn-cupy-overlap", STEP_GEMMS) \
                    or "-streamed" in impl:  # per step only (a full batch is never streamed)
                continue
            try:
                seconds_taken = book_run(impl, device)
            except Skip as why:
                self.skip(impl, "book", str(why))
                continue
            except ImportError as exc:
                self.skip(impl, "book", f"not importable: {exc}")
                continue
            except Exception as exc:
                self.fail(impl, "book", "fp32", exc)
                continue
            rows.append({
                "workload": "book", "impl": impl,
                "backend": impl.split("-")[1] if impl.startswith("gpunn-") else peer_backend(impl),
                "precision": "fp32", "device": device, "step_ms": seconds_taken * 1e3,
                "step_ms_q1": seconds_taken * 1e3, "step_ms_q3": seconds_taken * 1e3, "repeats": 1,
                "samples_per_s": BOOK_EPOCHS * 300 / seconds_taken,
                "tflops": None, "ceiling_fraction": None, "final_loss": None})
        add_speedups(rows)
        mark_defaults(rows)
        for row in rows:
            self.log(f"book    {device} {row['impl']:19s} {row['step_ms'] / 1e3:8.3f} s for "
                     f"{BOOK_EPOCHS} epochs" + speedup_text(row) + default_text(row))
        self.results += rows
        for row in rows:
            if self.ops and row["impl"] == f"gpunn-{row['backend']}-one-kernel":
                self._profile(functools.partial(book_profile, row["backend"], device), row["impl"],
                              "book")

    def workload(self, name: str, device: str, precision: str) -> None:
        """Every contender's step time on one workload, interleaved repeat by repeat."""
        w = WORKLOADS[name]
        runs = self._runs(name, w, device, precision)
        key = f"{device}-{precision}"
        times: dict[str, list[float]] = {impl: [] for impl in runs}
        ceiling_samples = []
        for _ in range(self.repeats):
            ceiling_samples.append(gemm_ceiling(device, precision, self.seconds / 2))
            for impl, (_, run, _) in list(runs.items()):
                try:
                    times[impl].append(time_steps(run, self.seconds))
                except Exception as exc:
                    self.fail(impl, name, precision, exc)
                    del runs[impl], times[impl]
        self.ceilings[key] = ceiling = statistics.median(ceiling_samples) if ceiling_samples else 0.0
        rows = []
        for impl, (backend, _, final_loss) in runs.items():
            ms = statistics.median(times[impl])
            q1, q3 = quartiles(times[impl])
            tflops = w.flops / (ms / 1e3) / 1e12
            rows.append({"workload": name, "impl": impl, "backend": backend,
                         "precision": precision, "device": device, "step_ms": ms,
                         "step_ms_q1": q1, "step_ms_q3": q3, "repeats": len(times[impl]),
                         "samples_per_s": w.batch / (ms / 1e3), "tflops": tflops,
                         "ceiling_fraction": tflops / ceiling if ceiling else None,
                         "final_loss": final_loss})
        add_speedups(rows)
        mark_defaults(rows)
        for row in rows:
            self.log(row_text(row))
        self.results += rows
        for impl, (backend, _, _) in runs.items():
            if self.ops and impl == f"gpunn-{backend}":  # the planned path of each backend
                self._profile(functools.partial(op_profile, w, name, backend, precision, device),
                              impl, name)

    def _profile(self, make: Callable[[], dict[str, Any]], impl: str, workload: str) -> None:
        try:
            profile = make()
        except Exception as exc:  # the profile is extra: the timed rows stand without it
            self.skip(f"{impl} op profile", workload, f"{type(exc).__name__}: {exc}")
            return
        self.op_profiles.append(profile)
        self.log(op_profile_text(profile))

    def _runs(self, name: str, w: Workload, device: str,
              precision: str) -> dict[str, tuple[str, Run, float]]:
        """impl -> (backend, run, loss after the same few steps) for those that can run."""
        X, y = workload_data(w)
        params = initial_params(w.sizes)
        runs = {}
        for impl, (backend, make) in contenders(self.backends, self.peers, device).items():
            try:
                run = make(w, params, X, y, precision, device)
                for _ in range(self.check_steps):  # the same steps for everyone, then the loss
                    run.step()
                run.sync()
                runs[impl] = (backend, run, run.loss())
            except Skip as why:
                self.skip(impl, name, str(why))
            except ImportError as exc:
                self.skip(impl, name, f"not importable: {exc}")
            except Exception as exc:
                self.fail(impl, name, precision, exc)
        return runs


def data_parallel(workloads: list[str], backends: list[str], nproc: int, repeats: int,
                  seconds: float, log: Callable[[str], Any] = print,
                  timeout: float = 600) -> list[dict[str, Any]]:
    """Rows for ``fit(distributed=True)`` on 1 and on ``nproc`` MPI ranks (bench/ranks.py, run
    under mpiexec), with the scaling efficiency: one rank's step time over ``nproc`` times the
    ``nproc`` ranks' (1.0: perfect strong scaling of the same global batch)."""
    import subprocess

    launcher = mpiexec()
    rows = []
    for name in workloads:
        for backend in backends:
            if name == "book" or (WORKLOADS[name].gpu_only and backend == "numpy") \
                    or backend not in available():
                continue
            measured = {}
            for n in (1, nproc):
                cmd = [launcher, "-n", str(n), sys.executable, "-m", "mpi4py", "-m",
                       "gpunn.bench.ranks", name, backend, str(repeats), str(seconds)]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                if done.returncode != 0:
                    raise RuntimeError(f"the {n}-rank run of {name} failed: {done.stderr.strip()[-500:]}")
                measured[n] = json.loads(done.stdout.strip().splitlines()[-1])
            w = WORKLOADS[name]
            for n, m in measured.items():
                row = {"workload": name, "impl": f"gpunn-{backend}-{n}-rank{'s' if n > 1 else ''}",
                       "backend": backend, "precision": "fp32",
                       "device": "gpu" if backend == "cupy" else "cpu", **m,
                       "samples_per_s": w.batch / (m["step_ms"] / 1e3), "tflops": None,
                       "ceiling_fraction": None, "final_loss": None,
                       "scaling_efficiency": measured[1]["step_ms"] / (n * m["step_ms"])}
                rows.append(row)
                log(row_text(row) + f"  {n} rank(s), scaling efficiency "
                                   f"{row['scaling_efficiency']:.2f}")
    return rows


def _importable(name: str) -> bool:
    try:
        return sys.modules.get(name, True) is not None and importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _check_request(args: Any) -> list[str]:
    """Every workload name and output path, checked before the suite runs rather than after."""
    workloads = args.workloads.split(",")
    for w in workloads:
        if w not in WORKLOADS and w != "book":
            raise ValueError(f"--workloads: unknown workload {w!r}; choose from "
                             f"{', '.join(list(WORKLOADS) + ['book'])}")
    for option, path in (("--json", args.json), ("--markdown", args.markdown), ("--plot", args.plot)):
        if path is not None:
            check_writable(path, option)
    if args.plot is not None:
        require_matplotlib()
    return workloads


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Limit BLAS (and PyTorch's own pool, when present) to ``threads`` for the suite only."""
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(threads)
    torch_threads = None
    if "torch" in sys.modules or _importable("torch"):
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        limits.restore_original_limits()
        if torch_threads is not None:
            sys.modules["torch"].set_num_threads(torch_threads)


def main(args: Any) -> int:
    """The ``gpunn bench`` command (arguments parsed by gpunn.cli)."""
    workloads = _check_request(args)
    print(f"BLAS (NumPy's GEMMs, gpunn's on the CPU): {describe()}")
    warning = forced_kernel_warning()
    if warning:
        print(f"warning: {warning}")
    backends = args.backends.split(",") if args.backends else available()
    peers = args.peers.split(",") if args.peers else ["pytorch", "jax", "numpy-book"]
    repeats = args.repeats or (3 if args.quick else 7)
    seconds = 0.25 if args.quick else 0.6
    with _threads(args.threads):
        doc = run_suite(workloads, backends, peers, args.precision.split(","), repeats, seconds,
                        ops=args.ops)
    if args.nproc > 1:
        doc["results"] += data_parallel(workloads, backends, args.nproc, repeats, seconds)
    for s in doc["skipped"]:
        print(f"skipped: {s['impl']} ({s.get('workload', '')}): {s['reason']}")
    for f in doc["failed"]:
        print(f"FAILED: {f['impl']} ({f['workload']}, {f['precision']}): {f['error']}")
    print(noise_note(doc))
    if args.json:
        write_atomic(args.json, json.dumps(doc, indent=2).encode())
    if args.markdown:
        write_atomic(args.markdown, markdown(doc).encode())
    if args.plot:
        plot(doc, args.plot)
    return 1 if doc["failed"] else 0
