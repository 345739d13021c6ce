"""The GPU backend: CuPy. The reference ops of ``base.py`` run as they are on CuPy arrays; fused
kernels and captured steps will override the hot ones here."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend


class CupyBackend(Backend):
    name = "cupy"

    def __init__(self) -> None:
        import cupy

        super().__init__(cupy)

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, self.xp.ndarray):
            return self.xp.asnumpy(x)
        return np.array(x, copy=True)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def device_name(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
