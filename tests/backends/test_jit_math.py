"""gpunn/backends/jit_math.py: the float32 exp and log of the CPU one-kernel trainer's softmax,
compiled as the trainer compiles them (jit.py's fast-math flags and error model), against
NumPy's float64 exp and log of the same float32 values."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from support.training import CPU_TRAINER

import gpunn as nn
from gpunn.backends import jit, jit_math

pytestmark = CPU_TRAINER

TINY = np.finfo(np.float32).tiny  # the smallest normal float32


def compiled(function):
    """``function`` over an array, in a loop compiled as the trainer is."""
    def each(values, out):
        for i in range(values.size):
            out[i] = function(values[i])
    loop = jit.njit(each)

    def run(values):
        out = np.empty_like(values)
        loop(values, out)
        return out
    return run


@pytest.fixture(scope="module")
def exp():
    return compiled(jit_math.exp_nonpositive)


@pytest.fixture(scope="module")
def log():
    return compiled(jit_math.log_positive)


def ulps(got, exact):
    """How far ``got`` (float32) is from ``exact`` (float64), in units of the last place of the
    float32 nearest ``exact``."""
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(np.float32))


def test_exp_is_within_an_ulp_where_the_trainer_takes_it(exp):
    """x <= 0 down to EXP_LOWEST, the least float32 whose e^x is a normal float32; below it 0
    comes back."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-90, 0, 200_001, dtype=np.float32),
                        -np.abs(rng.standard_normal(100_000)).astype(np.float32) * 10,
                        np.array([jit_math.EXP_LOWEST, -np.log(2) / 2, -np.log(2)], np.float32)])
    got = exp(x)
    normal = x >= jit_math.EXP_LOWEST
    assert ulps(got[normal], np.exp(x[normal].astype(np.float64))).max() <= 1
    assert (got[~normal] == 0).all() and (~normal).sum() > 1000
    below = np.nextafter(jit_math.EXP_LOWEST, np.float32(-np.inf))
    assert exp(np.array([below], np.float32))[0] == 0
    assert np.exp(np.float64(below)) < TINY <= np.exp(np.float64(jit_math.EXP_LOWEST))


def test_exp_of_the_edges(exp):
    x = np.array([0.0, -0.0, -1e-30, -np.inf, -1e30, -100.0, np.nan], np.float32)
    got = exp(x)
    np.testing.assert_array_equal(got[:6], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert np.isnan(got[6])  # a NaN logit stays NaN, so the loss shows the divergence


def test_log_is_within_an_ulp_of_every_positive_normal_number(log):
    rng = np.random.default_rng(1)
    x = np.concatenate([
        np.exp(rng.uniform(np.log(TINY), 0, 300_000)).astype(np.float32),  # probabilities
        np.linspace(1e-7, 1 - 1e-7, 100_001, dtype=np.float32),  # the clip's range
        np.exp(rng.uniform(0, np.log(np.finfo(np.float32).max), 1000)).astype(np.float32),
        np.array([TINY, 1e-7, 1 - 1e-7, 0.5, np.sqrt(0.5), 2.0], np.float32)])
    assert ulps(log(x), np.log(x.astype(np.float64))).max() <= 1


def test_log_of_the_edges(log):
    got = log(np.array([1.0, np.nan], np.float32))
    assert got[0] == 0.0 and np.isnan(got[1])


def test_float64_values_take_the_c_librarys_exp_and_log(exp, log):
    """The float64 trainer is unchanged: math.exp and math.log, to the bit."""
    x = -np.abs(np.random.default_rng(2).standard_normal(1000)) * 30
    np.testing.assert_array_equal(exp(x), [math.exp(v) for v in x])
    p = np.exp(x)
    np.testing.assert_array_equal(log(p), [math.log(v) for v in p])


def test_called_from_python_they_are_maths():
    assert jit_math.exp_nonpositive(-1.5) == math.exp(-1.5)
    assert jit_math.log_positive(0.25) == math.log(0.25)


def test_the_float32_trainer_calls_no_scalar_exp_or_log():
    """What makes the softmax loop vectorise: the book's float32 trainer, as compiled for a fit,
    has no call of LLVM's exp or log (numba's math.exp and math.log) or the C library's."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy", dtype="float32")
    model.backend.one_kernel_trainer = True
    model.fit(X, y, epochs=2, batch_size=None, verbose=0)
    [signature] = [s for s in jit.trainer(2, 3).signatures if str(s[0].dtype) == "float32"]
    # The same source compiled again in memory for that signature: numba shows no code it loaded
    # from its cache, and the fit's trainer may have come from there.
    fresh = jit.in_memory(2, 3)
    fresh.compile(signature)
    llvm = fresh.inspect_llvm(signature)
    called = set(re.findall(r"call [^@]*@([\w.]+)", llvm))
    assert "define" in llvm and "NRT_MemInfo_alloc_aligned" in called  # the trainer's own code
    assert not called & {"llvm.exp.f32", "llvm.log.f32", "expf", "logf"}, called


def test_a_division_by_zero_gives_what_numpy_gives():
    """jit.ERROR_MODEL: RMSprop's update of a parameter whose gradient and cache are 0, with an
    epsilon of 0 (below the optimizers' checks, which refuse it), is 0 / 0: NaN, as the NumPy
    formula makes it, not numba's default ZeroDivisionError."""
    from gpunn.backends import schedule as slots
    params, grads = np.ones(3, np.float32), np.zeros(3, np.float32)
    cache, schedule = np.zeros(3, np.float32), np.array(slots.start(0, 0.1, 0.0))
    slots.advance(schedule)
    jit.update(params, grads, cache, cache, schedule, slots.RULE_CACHE, 0.9, 0.0,
               np.empty(8, np.float32))
    with np.errstate(invalid="ignore"):
        expected = np.ones(3, np.float32) - np.float32(0.1) * grads / (np.sqrt(cache) + 0)
    np.testing.assert_array_equal(params, expected)
    assert np.isnan(params).all()
