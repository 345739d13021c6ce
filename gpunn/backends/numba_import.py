"""numba, imported the first time compiled CPU code is wanted, not when gpunn is.

Why: importing numba takes longer than the rest of ``import gpunn`` together (2-core AMD EPYC:
``import gpunn`` 0.29-0.38 s when it imported numba, 0.13-0.19 s without), and many runs never
call compiled code: any on the CuPy backend, and NumPy runs of networks too wide for the
one-kernel trainer that end before the passes start (passes.NUMPY_FIRST; the README's digits).
So passes.py, jit.py, jit_math.py and denormals.py reach numba only through ``numba()`` here,
when they first compile; a run that needs none of them never imports it.

numba is optional (``pip install "gpunn[jit]"``). Where it is missing, or its import fails (a
numba too old for this NumPy raises ImportError; llvmlite's library that will not load,
OSError), ``why_not`` says so and callers keep to NumPy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def _imported() -> tuple[Any, str | None]:
    """numba and None, or None and why its import failed: tried once, on the first call."""
    try:
        import numba
    except (ImportError, OSError) as exc:  # OSError: llvmlite's library would not load
        return None, f'needs numba (pip install "gpunn[jit]"; {exc})'
    return numba, None


def why_not() -> str | None:
    """None where numba imports (it is imported on the first call), else why it cannot."""
    return _imported()[1]


def numba() -> Any:
    """The numba module; RuntimeError naming why where it does not import."""
    module, reason = _imported()
    if reason is not None:
        raise RuntimeError(f"compiled CPU code {reason}")
    return module


class OnFirstCall:
    """``function``, compiled by ``compile(function)`` (numba's njit with the caller's options)
    the first time it is called, or its ``compiled`` is asked for (where code compiled by numba
    calls it, it must be handed the compiled one). ``py_func`` is the plain function."""

    def __init__(self, function: Callable[..., Any],
                 compile: Callable[[Callable[..., Any]], Any]) -> None:
        functools.update_wrapper(self, function)
        self.py_func = function
        self._compile = compile
        self._compiled: Any = None

    @property
    def compiled(self) -> Any:
        """The numba dispatcher (compiling it, and importing numba, the first time)."""
        if self._compiled is None:
            self._compiled = self._compile(self.py_func)
        return self._compiled

    def __call__(self, *args: Any) -> Any:
        return self.compiled(*args)
