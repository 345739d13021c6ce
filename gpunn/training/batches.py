"""The one batching iterator: which rows each step of an epoch takes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np


class Batch(NamedTuple):
    """Rows ``start:stop`` of the data, or of ``order`` (the epoch's shuffle) when it is set."""

    start: int
    stop: int
    order: Any = None

    @property
    def rows(self) -> int:
        return self.stop - self.start


def epoch_batches(n: int, batch_size: int, shuffle: bool, rng: np.random.Generator,
                  backend: Any) -> Iterator[Batch]:
    """The batches of one epoch over ``n`` samples. A full batch is every row in order
    (shuffling would not change its gradient, so no order is drawn); smaller batches follow an
    order the backend draws from ``rng`` when ``shuffle``, else the data's own order."""
    if batch_size >= n:
        yield Batch(0, n)
        return
    order = backend.permutation(n, rng) if shuffle else None
    for start in range(0, n, batch_size):
        yield Batch(start, min(start + batch_size, n), order)
