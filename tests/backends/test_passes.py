"""gpunn/backends/passes.py: the NumPy backend's compiled element-wise passes give the same bits
as base.py's reference ops (plain NumPy calls), special values included, and are taken only
where they should be."""

from __future__ import annotations

import numpy as np
import pytest
from support.training import apply_rule, same_bits

from gpunn.backends import passes
from gpunn.backends import schedule as slots
from gpunn.backends.base import Backend
from gpunn.backends.numpy_backend import NumpyBackend

compiled = pytest.mark.skipif(passes.why_not() is not None,
                              reason=f"no compiled passes: {passes.why_not()}")
SHAPE = (300, 257)  # 77,100 elements: over passes.COMPILED_FROM, not a multiple of a vector
DTYPES = [np.float32, np.float64]
RULES = ["sgd", "sgd-momentum", "adagrad", "rmsprop", "adam"]


@pytest.fixture(autouse=True)
def passes_from_the_first_op(monkeypatch):
    """The passes take large arrays from the first op here (a process starts them only after
    passes.NUMPY_FIRST elements through NumPy's calls: test_a_process_starts_the_passes_...)."""
    monkeypatch.setattr(passes, "numpy_first", passes.NumpyFirst(0))


def with_specials(rng: np.random.Generator, dtype: type, shape: tuple = SHAPE) -> np.ndarray:
    """Normal values, and in some places NaN (either sign), infinities, signed zeros, denormals
    and values near the overflow."""
    a = rng.standard_normal(shape).astype(dtype).reshape(-1)
    info = np.finfo(dtype)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, info.tiny / 8,
                         -info.tiny / 3, info.max / 2, -info.max], dtype)
    each = min(40, a.size // (2 * specials.size))
    where = rng.choice(a.size, each * specials.size, replace=False)
    a[where] = np.repeat(specials, each)
    return a.reshape(shape)


def same_bits_but_which_nan(got: np.ndarray, want: np.ndarray, a: np.ndarray,
                            b: np.ndarray) -> None:
    """same_bits, except where a + b adds two NaNs: which of them comes out, IEEE 754 leaves to
    the implementation, and NumPy's loops differ (NumPy 2.2's add of a row to each row returns
    the row's NaN, 2.4's and the compiled pass the other's). A NaN there, either way."""
    both = np.isnan(a) & np.isnan(b)
    assert np.isnan(got[both]).all() and np.isnan(want[both]).all()
    same_bits(np.where(both, 0, got), np.where(both, 0, want))


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_and_relu_gradient_are_the_reference_bits(dtype, rng):
    fast, ref = NumpyBackend(), Backend(np)
    z, d = with_specials(rng, dtype), with_specials(rng, dtype)
    b = with_specials(rng, dtype, (1, SHAPE[1]))
    got, want = z.copy(), z.copy()
    with np.errstate(all="ignore"):
        same_bits_but_which_nan(fast.bias_relu(got, b), ref.bias_relu(want, b), z, b)
    assert np.signbit(want[np.isnan(want)]).any() and (want == 0).any()  # the specials got there
    output = z  # the gradient where the forward output was > 0: specials on both sides
    with np.errstate(all="ignore"):  # inf * 0
        same_bits(fast.relu_backward(d, output, out=np.empty_like(d)),
                  ref.relu_backward(d, output, out=np.empty_like(d)))
        got, want = d.copy(), d.copy()  # in place, as Dense.backward calls it
        same_bits(fast.relu_backward(got, output, out=got),
                  ref.relu_backward(want, output, out=want))
    assert np.signbit(want[want == 0]).any()  # a negative gradient blocked is -0, as in NumPy


@compiled
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_updates_are_the_reference_bits(rule, dtype, rng):
    """Three steps of each rule (t = 4, 5, 6) on gradients with special values, against the
    reference's whole-array NumPy calls: parameters and state the same bits."""
    schedule = slots.start(3, 0.01, 1e-3, 0.9, 0.999)
    start = [with_specials(rng, dtype) for _ in range(2)] + [
        rng.standard_normal(SHAPE).astype(dtype), np.abs(rng.standard_normal(SHAPE)).astype(dtype)]
    runs = []
    for bk in (NumpyBackend(), Backend(np)):  # NumPy warns of the overflows; the passes do not
        params, grads, state_1, state_2 = (a.copy() for a in start)
        values = list(schedule)
        for _ in range(3):
            slots.advance(values)
            with np.errstate(all="ignore"):
                apply_rule(bk, rule, params, grads, state_1, state_2, values,
                           np.empty_like(params))
        runs.append((params, state_1, state_2))
    for got, want in zip(*runs):
        same_bits(got, want)


@compiled
def test_the_numpy_backend_takes_the_compiled_passes_for_large_arrays_only(monkeypatch, rng):
    """C-ordered arrays of one dtype from COMPILED_FROM elements: compiled. Smaller, strided, or
    without numba: NumPy's calls, the same numbers."""
    calls = []

    def counted(name):
        compiled_pass = getattr(passes, name)

        def call(*args):
            calls.append(name)
            return compiled_pass(*args)
        return call

    for name in ("bias_relu", "relu_backward_in_place", "sgd"):
        monkeypatch.setattr(passes, name, counted(name))
    fast = NumpyBackend()
    schedule = slots.start(0, 0.1, 0.0)
    slots.advance(schedule)

    def step(z, b, params):
        fast.bias_relu(z, b)
        fast.relu_backward(z, z, out=z)
        fast.sgd_update(params, z, None, schedule, 0.0, np.empty_like(params))

    z = rng.standard_normal(SHAPE).astype(np.float32)
    b = rng.standard_normal((1, SHAPE[1])).astype(np.float32)
    step(z, b, np.ones(SHAPE, np.float32))
    step(z[:64, :64].copy(), b[:, :64].copy(), np.ones((64, 64), np.float32))  # COMPILED_FROM
    assert calls == ["bias_relu", "relu_backward_in_place", "sgd"] * 2
    calls.clear()
    step(z[:40, :64].copy(), b[:, :64].copy(), np.ones((40, 64), np.float32))  # under COMPILED_FROM
    step(z[:, ::2], b[:, ::2].copy(), np.ones((300, 129), np.float32))  # every other column
    monkeypatch.setattr(passes, "why_not", lambda: "needs numba (here: pretended missing)")
    step(z, b, np.ones(SHAPE, np.float32))
    assert calls == []


def test_info_says_whether_the_passes_are_compiled(capsys, monkeypatch):
    from gpunn import cli

    for why_not in (None, 'needs numba (pip install "gpunn[jit]"; here: pretended missing)'):
        monkeypatch.setattr(passes, "why_not", lambda why_not=why_not: why_not)
        assert cli.main(["info"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if "element-wise" in x)
        assert line == ("CPU element-wise passes compiled: on arrays of 4,096 elements or "
                        "more, once a process has taken 1,000,000,000 elements through NumPy's "
                        "calls" if why_not is None else
                        f"CPU element-wise passes compiled: no, NumPy's calls ({why_not})")


@compiled
def test_a_process_starts_the_passes_once_numpy_first_elements_went_through_numpys_calls(
        monkeypatch, rng):
    """Ops the passes would take go through NumPy's calls until NUMPY_FIRST elements have, then
    the passes take them, the same bits either way; small arrays count for nothing. A process
    starts with NUMPY_FIRST, a billion; start_now() ends the wait."""
    assert passes.NUMPY_FIRST == 1_000_000_000
    calls = []
    compiled_pass = passes.bias_relu

    def counted(*args):
        calls.append(args[0].shape)
        return compiled_pass(*args)

    monkeypatch.setattr(passes, "bias_relu", counted)
    size = SHAPE[0] * SHAPE[1]
    monkeypatch.setattr(passes, "numpy_first", passes.NumpyFirst(2 * size))
    fast, ref = NumpyBackend(), Backend(np)
    z = rng.standard_normal(SHAPE).astype(np.float32)
    b = rng.standard_normal((1, SHAPE[1])).astype(np.float32)
    for i in range(4):
        fast.bias_relu(z[:40, :64].copy(), b[:, :64].copy())  # under COMPILED_FROM: not counted
        got, want = z.copy(), z.copy()
        fast.bias_relu(got, b)
        ref.bias_relu(want, b)
        same_bits(got, want)
        assert calls == [SHAPE] * max(0, i - 1), i  # NumPy's calls for the first two
    assert passes.numpy_first.remaining == 0
    monkeypatch.setattr(passes, "numpy_first", passes.NumpyFirst(passes.NUMPY_FIRST))
    fast.bias_relu(z.copy(), b)
    assert len(calls) == 2
    passes.start_now()
    fast.bias_relu(z.copy(), b)
    assert len(calls) == 3
