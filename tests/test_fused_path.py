"""The fused Dense path (cuBLASLt epilogues on a GPU), checked on the CPU.

1. How the layers use it: a NumPy backend that keeps ReLU masks as packed bits, as cuBLASLt does,
   and reads them back in ``dinputs_relu_bgrad``, must train exactly as the plain NumPy backend.
2. How the CuPy backend picks a path per problem (policy, "no algorithm", timing, capture), with
   the GPU calls replaced by stand-ins.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

import gpunn as nn
from gpunn.backends.cuda.cublaslt import relu_mask_shape
from gpunn.backends.cupy_backend import CupyBackend
from gpunn.backends.numpy_backend import NumpyBackend


class MaskingNumpy(NumpyBackend):
    """Writes the ReLU mask in the forward pass and takes the ReLU gradient from it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = self.read = 0

    def relu_mask_shape(self, rows, cols):
        return relu_mask_shape(rows, cols)

    def dense_forward(self, inputs, weights, biases, out, relu, mask=None):
        super().dense_forward(inputs, weights, biases, out, relu)
        if mask is None:
            return False
        assert relu and mask.shape == relu_mask_shape(*out.shape)
        mask[...] = 0
        mask[:, :math.ceil(out.shape[1] / 8)] = np.packbits(out > 0, axis=1, bitorder="little")
        self.written += 1
        return True

    def dinputs_relu_bgrad(self, dvalues, weights, out, below_output, below_dbiases, mask=None):
        if mask is None:
            return super().dinputs_relu_bgrad(dvalues, weights, out, below_output, below_dbiases)
        self.gemm(dvalues, weights, out=out, trans_b=True)
        keep = np.unpackbits(mask, axis=1, count=out.shape[1], bitorder="little").astype(bool)
        np.multiply(out, keep, out=out)
        self.bias_grad(out, out=below_dbiases)
        self.read += 1
        return out


def spiral_model(backend, dropout=False, regularized=False):
    reg = dict(weight_regularizer_l2=1e-3, bias_regularizer_l1=1e-4) if regularized else {}
    layers = [nn.Dense(2, 24, init="he", seed=1, **reg), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.1))
    layers += [nn.Dense(24, 19, init="he", seed=2, **reg), nn.ReLU(), nn.Dense(19, 3, seed=3)]
    model = nn.Sequential(layers)
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend=backend)
    return model


@pytest.mark.parametrize("dropout, regularized", [(False, False), (False, True), (True, False)])
def test_masked_path_trains_exactly_as_the_plain_one(dropout, regularized):
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)  # 150 rows: 64, 64, 22
    nn.set_seed(5)
    plain = spiral_model("numpy", dropout, regularized)
    masking = MaskingNumpy()
    nn.set_seed(5)
    fused = spiral_model(masking, dropout, regularized)
    for model in (plain, fused):
        model.fit(X, y, epochs=3, batch_size=64, seed=2, verbose=0)
    for a, b in zip(plain.get_params(), fused.get_params()):
        assert np.array_equal(a, b)
    assert plain.evaluate(X, y) == fused.evaluate(X, y)
    # Dense(2, 24) -> ReLU -> [Dropout] -> Dense(24, 19) -> ReLU -> Dense(19, 3): the second
    # pair is fused always, the first only without the Dropout between.
    pairs = 1 if dropout else 2
    steps = 3 * 3
    assert masking.read == pairs * steps
    assert masking.written == pairs * steps  # evaluate's forward passes keep no mask


def test_compile_links_each_dense_relu_dense_pair():
    model = spiral_model("numpy", dropout=True)
    d1, d2, d3 = model.dense_layers
    assert (d1.grads_from_above, d2.relu_below) == (False, None)  # a Dropout sits between
    assert d3.relu_below is d2 and d2.grads_from_above and not d3.grads_from_above
    plain = nn.Sequential([nn.Dense(2, 4), nn.Dense(4, 3)])
    plain.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy")
    assert all(d.relu_below is None and not d.grads_from_above for d in plain.dense_layers)


# ---- the CuPy backend's choice, per problem ------------------------------------------------


def cupy_shell(policy="auto", capturing=False, available=True):
    bk = CupyBackend.__new__(CupyBackend)  # no CuPy here: only what _fused_if_faster reads
    stream = types.SimpleNamespace(is_capturing=lambda: capturing)
    bk.xp = types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
    bk.epilogues = types.SimpleNamespace(available=available, tf32=False)
    bk.epilogue_policy = policy
    bk._epilogue_faster = {}
    bk._said_epilogue_failed = False
    return bk


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
    bk, calls = cupy_shell(policy, available=available), Calls()
    assert not bk._fused_if_faster(("p",), calls.fused, calls.separate)
    assert calls.log == ["separate"]


def test_no_algorithm_is_remembered():
    bk, calls = cupy_shell(), Calls(fused_ok=False)
    for _ in range(3):
        assert not bk._fused_if_faster(("p",), calls.fused, calls.separate)
    assert calls.log == ["fused", "separate", "separate", "separate"]


@pytest.mark.parametrize("fused_ms, expect", [(1.0, True), (3.0, False)])
def test_auto_keeps_whichever_measured_faster(fused_ms, expect):
    bk, calls = cupy_shell(), Calls()
    bk._time = lambda fn: fused_ms if fn == calls.fused else 2.0
    for _ in range(2):
        assert bk._fused_if_faster(("p",), calls.fused, calls.separate) is expect
    assert calls.log[0] == "fused"  # tried once for support, then the chosen one each time
    assert calls.log[1:] == ["fused" if expect else "separate"] * 2
    assert bk._epilogue_faster == {("p", False, "auto"): expect}


def test_always_skips_timing():
    bk, calls = cupy_shell("always"), Calls()
    bk._time = lambda fn: pytest.fail("timed under 'always'")
    assert bk._fused_if_faster(("p",), calls.fused, calls.separate)


def test_nothing_is_timed_inside_a_capture():
    bk, calls = cupy_shell(capturing=True), Calls()
    bk._time = lambda fn: pytest.fail("timed during a capture")
    assert not bk._fused_if_faster(("p",), calls.fused, calls.separate)
    assert calls.log == ["separate"] and bk._epilogue_faster == {}


def test_a_failing_epilogue_falls_back_and_says_so_once(caplog):
    bk, calls = cupy_shell(), Calls()

    def broken():
        calls.log.append("fused")
        raise RuntimeError("CUBLAS_STATUS_INVALID_VALUE")

    with caplog.at_level("WARNING", logger="gpunn"):
        for problem in ("p", "q"):
            assert not bk._fused_if_faster((problem,), broken, calls.separate)
    assert calls.log == ["fused", "separate"] * 2
    assert [r.getMessage() for r in caplog.records if "cuBLASLt" in r.getMessage()] == [
        "gpunn: a cuBLASLt epilogue failed (RuntimeError: CUBLAS_STATUS_INVALID_VALUE); using "
        "separate kernels where it did"]


def test_policy_names_are_checked():
    bk = cupy_shell()
    with pytest.raises(ValueError, match="epilogue_policy must be one of 'auto', 'always', "
                                         "'never'; got 'Never'"):
        bk.epilogue_policy = "Never"
    assert bk.epilogue_policy == "auto"
