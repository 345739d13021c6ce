"""cuda/epilogues.py: how the CuPy backend picks, per problem, between a cuBLASLt epilogue and
the separate kernels (policy, "no algorithm", timing, capture), with the GPU calls replaced by
stand-ins. (How the layers use masks: tests/test_network.py; the epilogues themselves:
test_cublaslt.py on the CPU, test_kernels.py on a GPU.)"""

from __future__ import annotations

import types

import numpy as np
import pytest

import gpunn as nn
from gpunn.backends.cuda import timing
from gpunn.backends.cuda.epilogues import EpilogueChoice


def choice(capturing=False, available=True):
    stream = types.SimpleNamespace(is_capturing=lambda: capturing)
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
    return EpilogueChoice(cupy, available)


class Calls:
    def __init__(self, fused_ok=True):
        self.log, self.fused_ok = [], fused_ok

    def fused(self):
        self.log.append("fused")
        return self.fused_ok

    def separate(self):
        self.log.append("separate")


@pytest.mark.parametrize("policy, available", [("never", True), ("auto", False)])
def test_separate_when_told_or_without_cublaslt(policy, available):
    c, calls = choice(available=available), Calls()
    assert not c.run(("p",), calls.fused, calls.separate, policy, False)
    assert calls.log == ["separate"]


def test_no_algorithm_is_remembered():
    c, calls = choice(), Calls(fused_ok=False)
    for _ in range(3):
        assert not c.run(("p",), calls.fused, calls.separate, "auto", False)
    assert calls.log == ["fused", "separate", "separate", "separate"]


@pytest.mark.parametrize("fused_ms, expect", [(1.0, True), (3.0, False)])
def test_auto_keeps_whichever_measured_faster(fused_ms, expect):
    c, calls = choice(), Calls()
    c.time = lambda fn: fused_ms if fn == calls.fused else 2.0
    for _ in range(2):
        assert c.run(("p",), calls.fused, calls.separate, "auto", False) is expect
    assert calls.log[0] == "fused"  # tried once for support, then the chosen one each time
    assert calls.log[1:] == ["fused" if expect else "separate"] * 2
    assert c.decisions == {("p", False, "auto"): expect}
    assert c.times == {("p", False, "auto"): (fused_ms, 2.0)}  # for benchmarks/gemm_tuning.py


def test_the_timed_calls_wait_behind_a_hold_so_the_events_time_the_device():
    """The timed calls are queued while the device is held, so a path's many launches do not
    count, only its device work: the hold comes after the warm-up call and one call timed on
    the host, and before the start event."""
    log = []

    class Event:
        def record(self):
            log.append("record")

        def synchronize(self):
            log.append("wait")

    stream = types.SimpleNamespace(is_capturing=lambda: False, synchronize=lambda: log.append("wait"))
    cuda = types.SimpleNamespace(get_current_stream=lambda: stream, Event=Event,
                                 get_elapsed_time=lambda start, end: 1.5)
    held = []
    c = EpilogueChoice(types.SimpleNamespace(cuda=cuda), True,
                       hold=lambda seconds: (held.append(seconds), log.append("hold")))
    assert c.time(lambda: log.append("call")) == 1.5
    assert log == ["call", "wait", "call", "hold", "record"] + ["call"] * 10 + ["record", "wait"]
    assert 1e-3 <= held[0] <= 0.05


def test_always_skips_timing():
    c, calls = choice(), Calls()
    c.time = lambda fn: pytest.fail("timed under 'always'")
    assert c.run(("p",), calls.fused, calls.separate, "always", False)


def test_nothing_is_timed_inside_a_capture():
    c, calls = choice(capturing=True), Calls()
    c.time = lambda fn: pytest.fail("timed during a capture")
    assert not c.run(("p",), calls.fused, calls.separate, "auto", False)
    assert calls.log == ["separate"] and c.decisions == {}


def test_a_failing_epilogue_falls_back_and_says_so_once(caplog):
    c, calls = choice(), Calls()

    def broken():
        calls.log.append("fused")
        raise RuntimeError("CUBLAS_STATUS_INVALID_VALUE")

    with caplog.at_level("WARNING", logger="gpunn"):
        for problem in ("p", "q"):
            assert not c.run((problem,), broken, calls.separate, "auto", False)
    assert calls.log == ["fused", "separate"] * 2
    assert [r.getMessage() for r in caplog.records if "cuBLASLt" in r.getMessage()] == [
        "gpunn: a cuBLASLt epilogue failed (RuntimeError: CUBLAS_STATUS_INVALID_VALUE); using "
        "separate kernels where it did"]


def test_policy_is_a_models_own_option_and_is_checked():
    models = []
    for _ in range(2):
        model = nn.Sequential([nn.Dense(2, 3)])
        models.append(model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy"))
    with pytest.raises(ValueError, match="epilogue_policy must be one of 'auto', 'always', "
                                         "'never'; got 'Never'"):
        models[0].backend.epilogue_policy = "Never"
    models[0].backend.epilogue_policy = "never"
    assert (models[0].backend.epilogue_policy, models[1].backend.epilogue_policy) == ("never", "auto")
    assert nn.backends.get_backend("numpy").epilogue_policy == "auto"
    assert np.array_equal(models[0].get_params()[0], models[0].dense_layers[0].weights)


class RecordingLt:
    """The CuPy backend's cuBLASLt wrapper, replaced: records each call's ``tune`` and answers
    ``takes`` (False: cuBLASLt declines, and the backend must take its other path)."""

    available = True

    def __init__(self, takes=True):
        self.calls, self.takes, self.fallbacks = [], takes, []

    def matmul(self, a, b, out, trans_a, trans_b, tf32, tune, fallback=None):
        self.calls.append(("matmul", tune))
        self.fallbacks.append(fallback)
        if self.takes:
            out[...] = (a.T if trans_a else a) @ (b.T if trans_b else b)
        return self.takes

    def forward(self, inputs, weights, biases, out, relu, mask, tf32, tune):
        self.calls.append(("forward", tune))
        return False


@pytest.mark.parametrize("tune, takes", [(False, True), (True, True), (True, False)])
def test_tuned_gemms_go_through_cublaslt(emulated, tune, takes, rng):
    """With tune_gemms a model's GEMMs go to cuBLASLt, tuned, with cuBLAS's own choice to time
    beside its algorithms, and to cuBLAS where cuBLASLt declines; without it to cuBLAS alone. Its
    epilogue calls carry the option too."""
    bk = emulated.configured(tune_gemms=tune)
    lt = RecordingLt(takes)
    bk.epilogues, bk.epilogue_choice = lt, choice()
    blas = []
    bk.blas = types.SimpleNamespace(gemm=lambda a, b, out, ta, tb, tf32: blas.append(1) or
                                    np.matmul(a.T if ta else a, b.T if tb else b, out=out))
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    out = np.full((4, 5), np.nan)
    bk.gemm(a, b, out, trans_b=True)
    np.testing.assert_allclose(out, a @ b.T)
    assert lt.calls == ([("matmul", True)] if tune else [])
    assert blas == ([] if tune and takes else [1])
    if tune:  # cuBLAS's own choice, given to be timed beside cuBLASLt's: the same product
        out[...] = np.nan
        lt.fallbacks[0]()
        np.testing.assert_allclose(out, a @ b.T)
        assert len(blas) == 1 + (not takes)
    before = len(lt.calls)
    bk.dense_forward(a, b.T.copy(), np.zeros((1, 5)), np.empty((4, 5)), relu=True)
    assert lt.calls[before] == ("forward", tune)  # declined: then the separate path's GEMM


class ForwardLt(RecordingLt):
    """A cuBLASLt that takes every forward epilogue: with a mask (RELU_AUX_BIAS) or without
    (RELU_BIAS), writing what cuBLASLt would (the mask: one byte a row here, 1 where passed)."""

    def forward(self, inputs, weights, biases, out, relu, mask, tf32, tune):
        self.calls.append("aux" if mask is not None else "relu")
        out[...] = np.maximum(inputs @ weights + biases, 0)
        if mask is not None:
            mask[...] = out > 0
        return True


@pytest.mark.parametrize("policy, fastest, ran, wrote_mask", [
    ("auto", "aux", "aux", True), ("auto", "relu", "relu", False),
    ("auto", "separate", "separate", False), ("always", "separate", "aux", True),
    ("never", "aux", "separate", False)])
def test_where_the_mask_costs_more_the_relu_may_still_ride_on_the_forward_gemm(
        emulated, policy, fastest, ran, wrote_mask, rng):
    """A hidden layer's forward in training (a mask buffer given) has three ways: the GEMM
    writing the mask (RELU_AUX_BIAS, so the backward can take DRELU_BGRAD), the GEMM with bias
    and ReLU but no mask (RELU_BIAS: the backward reads the output), or the separate passes.
    Under "auto" each is timed once and the fastest runs from then on; "always" takes the mask
    where cuBLASLt offers it, "never" none. Whichever runs, the output is the layer's, and the
    mask is said to be written only where it was."""
    bk = emulated.configured(epilogue_policy=policy, tune_gemms=False)
    lt = ForwardLt()
    bk.epilogues, bk.epilogue_choice = lt, choice()
    ms = {"aux": 3.0, "relu": 2.0, "separate": 2.5}
    ms[fastest] = 1.0

    def timed(fn):
        before = len(lt.calls)
        fn()
        return ms[lt.calls[before] if len(lt.calls) > before else "separate"]

    bk.epilogue_choice.time = timed
    x, w = rng.standard_normal((6, 3)), rng.standard_normal((3, 8))
    b = rng.standard_normal((1, 8))
    for _ in range(2):  # decided on the first call; the second runs the choice alone
        mask, out = np.zeros((6, 8), np.uint8), np.full((6, 8), np.nan)
        before = len(lt.calls)
        assert bk.dense_forward(x, w, b, out, relu=True, mask=mask) is wrote_mask
    np.testing.assert_allclose(out, np.maximum(x @ w + b, 0))
    assert lt.calls[before:] == ([] if ran == "separate" else [ran])
    assert mask.any() == wrote_mask


def faster(capturing=False, prefer=None):
    stream = types.SimpleNamespace(is_capturing=lambda: capturing)
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
    return timing.Faster(cupy, prefer=prefer)


@pytest.mark.parametrize("ours_ms, expect", [(1.0, True), (3.0, False)])
def test_a_kernel_of_ours_is_kept_where_it_measured_faster_than_the_gemm(ours_ms, expect):
    """timing.Faster (the narrow kernels against the GEMM path): each way timed once, the first
    time a problem comes, the faster run then and every time after, with no more timing; the
    times are kept for the report (benchmarks/gemm_tuning.py)."""
    log = []
    c = faster()

    def ours():
        log.append("ours")

    def theirs():
        log.append("theirs")

    c.time = lambda fn: (log.append("timed"), ours_ms if fn is ours else 2.0)[1]
    for _ in range(3):
        assert c.run(("p",), ours, theirs) is expect
    assert log == ["timed", "timed"] + ["ours" if expect else "theirs"] * 3
    assert c.decisions == {("p",): expect} and c.times == {("p",): (ours_ms, 2.0)}


def test_the_gemm_runs_untimed_inside_a_capture_until_a_warm_up_decides():
    c, log = faster(capturing=True), []
    c.time = lambda fn: pytest.fail("timed during a capture")
    assert not c.run(("p",), lambda: log.append("ours"), lambda: log.append("theirs"))
    assert log == ["theirs"] and c.decisions == {}


@pytest.mark.parametrize("prefer", [True, False])
def test_a_fixed_preference_is_taken_untimed(prefer):
    c, log = faster(prefer=prefer), []
    c.time = lambda fn: pytest.fail("timed with a fixed preference")
    assert c.run(("p",), lambda: log.append("ours"), lambda: log.append("theirs")) is prefer
    assert log == ["ours" if prefer else "theirs"]


def test_a_kernel_of_ours_that_fails_leaves_the_gemm_path_and_says_so_once(caplog):
    c, log = faster(), []

    def broken():
        log.append("ours")
        raise RuntimeError("cudaErrorLaunchOutOfResources")

    c.time = lambda fn: (fn(), 1.0)[1]
    with caplog.at_level("WARNING", logger="gpunn"):
        for problem in ("p", "q", "p"):
            assert not c.run((problem,), broken, lambda: log.append("theirs"))
    assert log == ["ours", "theirs", "ours", "theirs", "theirs"]
    assert c.decisions == {("p",): False, ("q",): False} and c.times == {}
    assert [r.getMessage() for r in caplog.records] == [
        "gpunn: a kernel of gpunn's failed (RuntimeError: cudaErrorLaunchOutOfResources); using "
        "the GEMM path where it did"]
