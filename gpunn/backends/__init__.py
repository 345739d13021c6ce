"""Backend selection: ``get_backend("auto" | "numpy" | "cupy")`` and ``available()``.

The default comes from the ``GPUNN_BACKEND`` environment variable, read when a backend is first
needed (not at import), else "auto": CuPy when it imports and a CUDA device answers, else NumPy.

Layers, losses and optimizers called on their own (the book's style) run where their data lives:
``backend_of(*arrays)`` is the one place that decides, refusing NumPy and CuPy arrays mixed in one
call; ``use(backend)`` pins them to one backend instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .base import Backend
from .numpy_backend import NumpyBackend

__all__ = ["Backend", "BackendUnavailableError", "CHOICES", "available", "backend_of", "cupy_problem",
           "get_backend", "on_device", "pinned", "use"]

CHOICES = ("auto", "numpy", "cupy")
DEVICE_HINT = ("check that nvidia-smi lists a GPU and that CUDA_VISIBLE_DEVICES does not hide it; "
               "the CUDA extra's major version must match the driver's (gpunn[cuda12] or [cuda13])")
INSTALL_HINT = 'install the CUDA extra: pip install "gpunn[cuda12]" (CUDA 12) or "gpunn[cuda13]" (CUDA 13)'

_log = logging.getLogger("gpunn")
_instances: dict[str, Backend] = {}
_auto_said = False
_pinned: Backend | None = None  # use(): where standalone layers run; None: follow the data


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
            # CuPy there but no device: installing more would not help.
            hint = INSTALL_HINT if "not importable" in problem else DEVICE_HINT
            raise BackendUnavailableError(f"backend 'cupy' cannot run: {problem}; {hint}")
    if name not in _instances:
        if name == "cupy":
            from .cupy_backend import CupyBackend

            _instances[name] = CupyBackend()
        else:
            _instances[name] = NumpyBackend()
    return _instances[name]


def use(backend: str | Backend | None) -> None:
    """Run layers, losses and optimizers called on their own (not compiled into a model) on
    ``backend`` from now on: NumPy inputs are copied to it. ``None`` (the default): each follows
    its data, CuPy arrays on the cupy backend and anything else on numpy."""
    global _pinned
    _pinned = None if backend is None else get_backend(backend)


def on_device(array: Any) -> bool:
    """Whether ``array`` lives on a CUDA device (a CuPy array, or anything with its interface)."""
    return hasattr(array, "__cuda_array_interface__")


def backend_of(*arrays: Any, names: tuple[str, ...] = ()) -> Backend:
    """The backend standalone work on ``arrays`` runs on: the one ``use`` pinned, else the data's.
    NumPy and CuPy arrays in one call are refused with a TypeError naming them (``names``), never
    copied across silently."""
    names = tuple(names) + tuple(f"argument {i}" for i in range(len(names), len(arrays)))
    where = [on_device(a) for a in arrays]
    if _pinned is not None:
        for name, device in zip(names, where):
            if device and _pinned.name != "cupy":
                raise TypeError(f"{name} is a CuPy array, but gpunn.use({_pinned.name!r}) runs "
                                f"layers on the CPU: move it with .get(), or gpunn.use('cupy')")
        return _pinned
    if any(where) and not all(where):
        kinds = ", ".join(f"{name} ({'CuPy' if device else 'NumPy'})"
                          for name, device in zip(names, where))
        raise TypeError(f"NumPy and CuPy arrays mixed in one call: {kinds}; put them on one "
                        f"device first (cupy.asarray(a) to the GPU, a.get() back)")
    return get_backend("cupy" if any(where) else "numpy")


def pinned() -> Backend | None:
    """The backend ``use`` pinned standalone work to, or None (each follows its data)."""
    return _pinned
