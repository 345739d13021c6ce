"""What NumPy's BLAS is here, and whether the environment holds it back.

OpenBLAS picks a GEMM kernel for the CPU it finds (SkylakeX on an AVX-512 Xeon, Haswell on an
AVX2 one). ``OPENBLAS_CORETYPE`` in the environment forces one: an older kernel on a newer CPU
halves NumPy's GEMM rate (measured on this project's AVX-512 machine: 249 against 472 GFLOP/s),
while PyTorch and JAX, which bring their own GEMMs, are unaffected, so comparisons between them
mislead. ``gpunn info`` and ``gpunn bench`` report the kernel and warn when that happens.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

#: OpenBLAS kernels that use AVX-512.
AVX512_KERNELS = ("SkylakeX", "Cooperlake", "SapphireRapids")


def is_numpys(entry: dict[str, Any]) -> bool:
    """Whether a threadpoolctl entry is NumPy's own BLAS: a library inside NumPy's install (a
    wheel's numpy.libs, or numpy/ itself). Others may be loaded beside it (SciPy's wheel brings
    its own OpenBLAS, of another version), and threadpoolctl may list them first."""
    path, numpy_dir = entry.get("filepath") or "", os.path.dirname(np.__file__)
    return path.startswith((numpy_dir + os.sep, numpy_dir + ".libs" + os.sep))


def numpy_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``entries`` with NumPy's own first, the others in the order given."""
    return sorted(entries, key=lambda entry: not is_numpys(entry))


def blas_entries() -> list[dict[str, Any]]:
    """threadpoolctl's view of the BLAS libraries loaded, NumPy's first (empty without
    threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return numpy_first([info for info in threadpool_info() if info.get("user_api") == "blas"])


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe(entries: list[dict[str, Any]] | None = None) -> str:
    """``openblas 0.3.31 (2 threads, SkylakeX kernel)``, or what is known."""
    entries = blas_entries() if entries is None else entries
    if not entries:
        return "unknown (threadpoolctl sees no BLAS)"
    parts = []
    for e in entries:
        kernel = f", {e['architecture']} kernel" if e.get("architecture") else ""
        parts.append(f"{e.get('internal_api', '?')} {e.get('version') or ''} "
                     f"({e.get('num_threads', '?')} threads{kernel})".replace("  ", " "))
    return "; ".join(parts)


def forced_kernel_warning(env: dict[str, str] | None = None,
                          entries: list[dict[str, Any]] | None = None,
                          flags: Callable[[], set[str]] = cpu_flags) -> str | None:
    """A warning when the environment makes OpenBLAS use an older kernel than the CPU supports
    (or sets its cache size), else None."""
    env = dict(os.environ) if env is None else env
    forced, l2 = env.get("OPENBLAS_CORETYPE"), env.get("OPENBLAS_L2_SIZE")
    if not forced and not l2:
        return None
    entries = blas_entries() if entries is None else entries
    kernel = next((e.get("architecture") for e in entries
                   if e.get("internal_api") == "openblas" and e.get("architecture")), None)
    settings = ", ".join(f"{k}={v}" for k, v in (("OPENBLAS_CORETYPE", forced),
                                                   ("OPENBLAS_L2_SIZE", l2)) if v)
    if kernel and kernel not in AVX512_KERNELS and "avx512f" in flags():
        return (f"{settings} in the environment makes OpenBLAS use its {kernel} kernel on a CPU "
                f"with AVX-512: NumPy's GEMMs (gpunn's on the CPU) may run at half rate while "
                f"PyTorch's and JAX's do not; unset it for a fair comparison")
    return (f"{settings} in the environment overrides what OpenBLAS chose for this CPU"
            + (f" (it runs its {kernel} kernel)" if kernel else ""))
