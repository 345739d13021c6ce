"""Optimizer settings the training tests share, a public view of a model's steps, a check that
two arrays hold the same bits, and the mark of tests that need the CPU one-kernel trainer."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as nn
from gpunn.backends import jit

#: Tests of the compiled CPU trainer: skipped, saying why, where numba is missing.
CPU_TRAINER = pytest.mark.skipif(jit.why_not() is not None,
                                 reason=f"no CPU one-kernel trainer: {jit.why_not()}")

#: Every rule with decay (and momentum), at learning rates that train the spiral in a few epochs.
OPTIMIZERS = [lambda: nn.SGD(lr=0.5, decay=1e-3, momentum=0.9), lambda: nn.Adagrad(lr=0.3, decay=1e-3),
              lambda: nn.RMSprop(lr=0.01, decay=1e-3), lambda: nn.Adam(lr=0.02, decay=5e-7)]


def made_steps(model) -> dict[tuple[int, int], str]:
    """(rows, steps) -> path ("eager", "planned", "one-kernel") of each step the model made."""
    return {(step.rows, step.steps): step.path for step in model.steps}


def interrupt_at(monkeypatch, model, step: int) -> None:
    """Ctrl-C in the middle of training: the model's ``step``-th optimizer step (counting from 1)
    raises KeyboardInterrupt instead of running."""
    real_step, calls = model.network.step, []

    def stepping(xb, yb):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real_step(xb, yb)

    monkeypatch.setattr(model.network, "step", stepping)


def apply_rule(bk, rule, params, grads, momentums, cache, schedule, scratch):
    """One update by ``rule`` ("sgd", "sgd-momentum", "adagrad", "rmsprop", "adam") through the
    backend's op, with the hyper-parameters the op tests use."""
    if rule in ("sgd", "sgd-momentum"):
        momentum = rule == "sgd-momentum"
        bk.sgd_update(params, grads, momentums if momentum else None, schedule,
                      0.9 if momentum else 0.0, scratch)
    elif rule == "adagrad":
        bk.adagrad_update(params, grads, cache, schedule, 1e-7, scratch)
    elif rule == "rmsprop":
        bk.rmsprop_update(params, grads, cache, schedule, 1e-7, 0.9, scratch)
    else:
        bk.adam_update(params, grads, momentums, cache, schedule, 1e-7, 0.9, 0.999, scratch)


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """The same bits, element for element: NaN's sign and payload and -0 included (float32 or
    float64)."""
    bits = {4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    np.testing.assert_array_equal(got.view(bits), want.view(bits))
