"""The CPU backend: NumPy, with overrides only where they measured faster than ``base.py``."""

from __future__ import annotations

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self) -> None:
        super().__init__(np)

    def device_name(self) -> str:
        import platform

        return platform.processor() or platform.machine() or "CPU"
