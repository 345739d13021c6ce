"""The side stream of overlap_weight_grads, on the CPU: the order of its stream calls against a
stand-in runtime that logs them (streams.py), when the CuPy backend forks work there (only inside
a capture, once the stream is made outside one), and that what a backward pass puts aside may
run as late as the end of the pass without changing a bit of training (no later work of the pass
writes what it reads or reads what it writes)."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
from support.backends import RecordingNumpy
from support.cuda_runtime import Runtime

import gpunn as nn
from gpunn.backends.cuda.streams import SideStream


def test_work_put_aside_starts_after_what_came_before_it_and_is_joined_back():
    runtime, made = Runtime(stream_name="side"), []
    side = SideStream(runtime, made.append)
    assert not side.made
    side.make()
    side.make()
    assert made == [side.stream] and side.made  # made once, its GEMM state prepared once
    ran = []
    side.run(lambda: ran.append(runtime.current_stream().name))
    side.run(lambda: ran.append(runtime.current_stream().name))
    side.join()
    side.join()  # nothing more out: nothing to join
    assert ran == ["side", "side"] and runtime.current_stream() is runtime.compute
    assert runtime.log == [
        ("record", "e1", "compute"), ("wait", "side", "e1"), ("use", "side"), ("used", "side"),
        ("record", "e2", "compute"), ("wait", "side", "e2"), ("use", "side"), ("used", "side"),
        ("record", "e3", "side"), ("wait", "compute", "e3")]


def test_work_that_fails_on_the_side_stream_is_still_joined_back():
    runtime = Runtime(stream_name="side")
    side = SideStream(runtime)
    side.make()
    with pytest.raises(ZeroDivisionError):
        side.run(lambda: 1 / 0)
    assert runtime.current_stream() is runtime.compute
    side.join()  # a capture left unjoined could not end
    assert runtime.log[-2:] == [("record", "e2", "side"), ("wait", "compute", "e2")]


def test_the_cupy_backend_puts_work_aside_only_in_a_recorded_step(emulated):
    """Off (the default): work runs where it is put. On: outside a capture (a step's first call,
    where each way of a product is timed alone) the side stream is made and work still runs at
    once; inside a capture it goes to the side stream, joined back when the pass ends, even one
    that fails; a capture before the stream was made runs the work at once (nothing is made
    inside a capture)."""
    runtime, made, ran = Runtime(stream_name="side"), [], []

    def work(name):
        return lambda: ran.append((name, runtime.current_stream().name))

    with emulated.overlap():
        emulated.aside(work("off"))
    assert ran == [("off", "compute")]

    on = emulated.configured(overlap_weight_grads=True)
    on.side, capturing = SideStream(runtime, made.append), [True]
    on.capturing = lambda: capturing[0]
    with on.overlap():  # a capture first, before the stream was made
        on.aside(work("unmade"))
    assert not made and not runtime.log
    capturing[0] = False
    with on.overlap():
        on.aside(work("eager"))
    assert made == [on.side.stream] and not runtime.log
    capturing[0] = True
    with on.overlap():
        on.aside(work("first"))
        ran.append(("between", runtime.current_stream().name))
        on.aside(work("second"))
    assert ran[1:] == [("unmade", "compute"), ("eager", "compute"), ("first", "side"),
                       ("between", "compute"), ("second", "side")]
    assert runtime.log[-2:] == [("record", "e3", "side"), ("wait", "compute", "e3")]
    with pytest.raises(ValueError), on.overlap():
        on.aside(work("third"))
        raise ValueError("a pass that fails")
    assert runtime.log[-2:] == [("record", "e5", "side"), ("wait", "compute", "e5")]
    with on.overlap():  # outside a pass's stretch, work runs at once again
        pass
    on.aside(work("after"))
    assert ran[-1] == ("after", "compute")


class Deferred:
    """``overlap``/``aside`` that hold each piece of work put aside until the pass ends: as late
    as a second stream could run it. Counts what was put aside."""

    def __init__(self) -> None:
        self.held: list | None = None
        self.put_aside = 0

    @contextlib.contextmanager
    def overlap(self):
        self.held = []
        try:
            yield
        finally:
            held, self.held = self.held, None
            for work in held:
                work()

    def aside(self, work) -> None:
        if self.held is None:
            work()
        else:
            self.held.append(work)
            self.put_aside += 1


def train(model_layers, backend, deferred: Deferred | None, precision: str = "fp32",
          regularized: bool = False, **fit):
    """Seeded training on the digits (shuffled, a validation split), with the backend's
    overlap/aside replaced by ``deferred``'s where given: (parameters, history)."""
    X, y = nn.datasets.load_digits()
    X, y = X[:400], y[:400]
    nn.set_seed(0)
    model = nn.Sequential(model_layers())
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend=backend, precision=precision)
    if deferred is not None:
        model.backend.overlap, model.backend.aside = deferred.overlap, deferred.aside
    history = model.fit(X, y, epochs=3, batch_size=64, seed=0, verbose=0, validation_split=0.2,
                        **fit)
    return model.get_params(), history


def assert_same_bits(a, b):
    (params_a, history_a), (params_b, history_b) = a, b
    assert {k: history_a[k] for k in history_a.keys()} == {k: history_b[k] for k in history_b.keys()}
    for pa, pb in zip(params_a, params_b):
        for x, y in zip(pa, pb):
            np.testing.assert_array_equal(x, y)


def relu_stack():
    return [nn.Dense(64, 48, init="he"), nn.ReLU(), nn.Dense(48, 32, init="he"), nn.ReLU(),
            nn.Dense(32, 10)]


def mixed_stack():
    """Activations that do not fold into the Dense before them, penalties, dropout."""
    return [nn.Dense(64, 40, init="he", weight_regularizer_l2=1e-3, bias_regularizer_l1=1e-4),
            nn.Sigmoid(), nn.Dropout(0.1), nn.Dense(40, 24, weight_regularizer_l1=1e-4), nn.ReLU(),
            nn.Linear(), nn.Dense(24, 10)]


@pytest.mark.parametrize("layers", [relu_stack, mixed_stack], ids=["relu", "mixed"])
def test_weight_gradients_put_aside_to_the_end_of_the_pass_train_the_same_bits(layers):
    """Planned steps replayed as stand-in graphs (RecordingNumpy): every Dense layer's weight
    gradients held back to the end of each backward pass give the same bits as run in place, so
    nothing later in the pass overwrites what they read or reads what they write."""
    deferred = Deferred()
    assert_same_bits(train(layers, RecordingNumpy(), deferred), train(layers, RecordingNumpy(), None))
    steps = 3 * -(-320 // 64)
    assert deferred.put_aside == 3 * steps  # three Dense layers a step


@pytest.mark.parametrize("precision, narrow", [("fp32", False), ("fp32", True), ("tf32", False),
                                               ("bf16", True)])
def test_the_gpu_paths_weight_gradients_put_aside_train_the_same_bits(emulated, monkeypatch,
                                                                      precision, narrow):
    """The same on the CuPy backend's own paths (kernels emulated on the CPU): its buffers, the
    fused ReLU gradient and bias gradient of the layer below, bf16 copies, the narrow kernels,
    tf32's transposed copies (the GEMMs stay NumPy's, so tf32 sums as fp32 does here)."""
    monkeypatch.setattr(emulated.narrow_choice, "prefer", narrow)
    monkeypatch.setattr(emulated.transpose_choice, "prefer", True)

    def run(deferred):
        X, y = nn.datasets.load_digits()
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(64, 24, init="he"), nn.ReLU(), nn.Dense(24, 16, init="he"),
                               nn.ReLU(), nn.Dense(16, 10)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend=emulated,
                      precision="bf16" if precision == "bf16" else "fp32")
        if precision == "tf32":  # as a GPU would take it (the GEMMs are NumPy's either way)
            bk = model.backend
            bk.options = dataclasses.replace(bk.options, precision="tf32")
        if deferred is not None:
            model.backend.overlap, model.backend.aside = deferred.overlap, deferred.aside
        history = model.fit(X[:96], y[:96], epochs=1, batch_size=32, seed=0, verbose=0)
        return model.get_params(), history

    deferred = Deferred()
    assert_same_bits(run(deferred), run(None))
    assert deferred.put_aside == 3 * 3
