"""training/batches.py: which rows each step of an epoch takes."""

from __future__ import annotations

import numpy as np

from gpunn.backends import get_backend
from gpunn.training.batches import Batch, epoch_batches


def test_a_full_batch_takes_every_row_in_order_and_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    for batch_size in (10, 11):
        assert list(epoch_batches(10, batch_size, True, rng, get_backend("numpy"))) == [Batch(0, 10)]
    assert rng.bit_generator.state == state  # shuffling would not change a full batch's gradient


def test_mini_batches_cover_a_shuffle_in_order():
    batches = list(epoch_batches(10, 4, True, np.random.default_rng(3), get_backend("numpy")))
    assert [(b.start, b.stop, b.rows) for b in batches] == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    order = batches[0].order
    assert all(b.order is order for b in batches)
    assert np.array_equal(order, np.random.default_rng(3).permutation(10))


def test_without_shuffle_mini_batches_keep_the_data_order():
    batches = list(epoch_batches(5, 2, False, np.random.default_rng(0), get_backend("numpy")))
    assert batches == [Batch(0, 2), Batch(2, 4), Batch(4, 5)]
