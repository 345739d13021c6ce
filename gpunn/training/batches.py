"""The one batching iterator: which rows each step of an epoch takes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from ..distributed import part


class Batch(NamedTuple):
    """Rows ``start:stop`` of the data, or of ``order`` (the epoch's shuffle) when it is set;
    in distributed training, this rank's part of a batch of ``whole`` rows (0: not a part)."""

    start: int
    stop: int
    order: Any = None
    whole: int = 0

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def share(self) -> float:
        """The fraction of the whole batch's rows this batch holds."""
        return self.rows / self.whole if self.whole else 1.0


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


def rank_parts(batches: Iterator[Batch], size: int, rank: int) -> Iterator[Batch]:
    """Each batch's contiguous part for ``rank`` of ``size`` ranks (possibly empty), knowing
    the whole batch's size."""
    for batch in batches:
        lo, hi = part(batch.rows, size, rank)
        yield Batch(batch.start + lo, batch.start + hi, batch.order, batch.rows)
