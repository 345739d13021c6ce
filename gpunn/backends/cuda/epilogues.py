"""Choosing, per problem, between a cuBLASLt epilogue and the separate kernels.

A Dense layer's bias and ReLU can ride on its GEMM (cublaslt.py), or run as their own kernels
after a plain GEMM. Which is faster depends on the shape, so under the "auto" policy each problem
is timed once, the first time it comes, and the faster path kept. Both paths write the same
outputs from the same inputs, so running each a few times to time them changes nothing.

Each path is timed by its device work (``timing.py``): the fused path is one call where the
separate one is two or three, so timing the host's launches would favour it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import timing


class EpilogueChoice(timing.Choices):
    """Remembers, per problem, whether the fused call measured faster (or could not run)."""

    def __init__(self, cupy: Any, available: bool,
                 hold: Callable[[float], None] | None = None) -> None:
        super().__init__(cupy, hold)  # decisions: the problem key, with precision and policy
        self.available = available  # cuBLASLt through nvmath-python (times: fused, separate)

    def run(self, problem: tuple, fused: Any, separate: Any, policy: str, tf32: bool) -> bool:
        """Run ``fused`` (a cuBLASLt call that returns False where it cannot run) or
        ``separate`` (GEMM, then kernels), as ``policy`` ("auto", "always", "never") and the
        first measurement say; returns whether the fused one ran."""
        if not self.available or policy == "never":
            separate()
            return False
        key = problem + (tf32, policy)
        faster = self.decisions.get(key)
        if faster is None:
            if self.capturing():
                faster = False  # nothing is timed inside a capture (the warm-up step times it)
            elif not self._try(fused):
                faster = self.decisions[key] = False  # no cuBLASLt algorithm for it
            elif policy == "always":
                faster = self.decisions[key] = True
            else:
                self.times[key] = self.time(fused), self.time(separate)
                faster = self.decisions[key] = self.times[key][0] < self.times[key][1]
        if faster and fused():
            return True
        separate()
        return False

    def _try(self, fused: Any) -> bool:
        """The first call of an epilogue for a problem. Should cuBLASLt fail outright, training
        goes on with the separate kernels, which do the same work; said once."""
        try:
            return bool(fused())
        except Exception as exc:
            self.failed("a cuBLASLt epilogue", "separate kernels", exc)
            return False
