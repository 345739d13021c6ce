"""The workloads of the project's performance goals, and what every contender starts from: the
same initial weights and the same data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LR = 0.01


@dataclass(frozen=True)
class Workload:
    sizes: tuple[int, ...]
    batch: int
    gpu_only: bool = False

    @property
    def flops(self) -> float:
        """6 B sum(in * out) per step, less the first layer's input gradient (not computed)."""
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        return 6 * self.batch * sum(i * o for i, o in pairs) - 2 * self.batch * pairs[0][0] * pairs[0][1]


WORKLOADS = {
    "small": Workload((2, 64, 3), 300),  # the spiral network
    "medium": Workload((784, 1024, 1024, 10), 1024),
    "large": Workload((4096, 4096, 4096, 4096, 1000), 8192, gpu_only=True),
}
#: The row of the step's GEMMs alone (contenders.step_gemms_run): a floor shown beside the
#: contenders, never a peer in gpunn's speed-ups.
STEP_GEMMS = "step-gemms"
BOOK_EPOCHS = 10_001  # the "book" workload: the whole spiral run, Adam, full batch


def initial_params(sizes: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """He-initialised weights and zero biases, shared by every contender."""
    rng = np.random.default_rng(seed)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
                   np.zeros((1, b), np.float32)]
    return params


def workload_data(w: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((w.batch, w.sizes[0])).astype(np.float32)
    return X, rng.integers(0, w.sizes[-1], w.batch)
