"""Backend selection: ``get_backend("auto" | "numpy" | "cupy")`` and ``available()``.

The default comes from the ``GPUNN_BACKEND`` environment variable, read when a backend is first
needed (not at import), else "auto": CuPy when it imports and a CUDA device answers, else NumPy.
"""

from __future__ import annotations

import logging
import os

from .base import Backend
from .numpy_backend import NumpyBackend

__all__ = ["Backend", "BackendUnavailableError", "CHOICES", "available", "cupy_problem", "get_backend"]

CHOICES = ("auto", "numpy", "cupy")
INSTALL_HINT = 'install the CUDA extra: pip install "gpunn[cuda12]" (CUDA 12) or "gpunn[cuda13]" (CUDA 13)'

_log = logging.getLogger("gpunn")
_instances: dict[str, Backend] = {}
_auto_said = False


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run on this machine."""


def cupy_problem() -> str | None:
    """Why CuPy cannot run here, or None when it can."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy imports but no CUDA device answers ({type(exc).__name__}: {exc})"
    if count < 1:
        return "CuPy imports but no CUDA device is visible"
    return None


def available() -> list[str]:
    """The backends that can run on this machine now, fastest last."""
    return ["numpy"] if cupy_problem() else ["numpy", "cupy"]


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend called ``name`` ("auto", "numpy" or "cupy"; None reads GPUNN_BACKEND)."""
    global _auto_said
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get("GPUNN_BACKEND", "auto") or "auto"
    if not isinstance(name, str) or name.lower() not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, CHOICES))}; got {name!r}")
    name = name.lower()
    if name == "auto":
        problem = cupy_problem()
        name = "numpy" if problem else "cupy"
        if not _auto_said:
            _auto_said = True
            why = f" ({problem})" if problem else ""
            _log.info("gpunn: backend 'auto' chose %s%s", name, why)
    elif name == "cupy":
        problem = cupy_problem()
        if problem:
            raise BackendUnavailableError(f"backend 'cupy' cannot run: {problem}; {INSTALL_HINT}")
    if name not in _instances:
        if name == "cupy":
            from .cupy_backend import CupyBackend

            _instances[name] = CupyBackend()
        else:
            _instances[name] = NumpyBackend()
    return _instances[name]
