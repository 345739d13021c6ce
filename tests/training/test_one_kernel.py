"""The one-kernel trainer's contract (``Backend.train_in_one_kernel``), checked on the CPU: a NumPy
backend whose ``train_in_one_kernel`` follows kernels.cu's kernel step by step (support.backends'
OneKernelNumpy) must train the book's network exactly as the planned steps do, through the real
plumbing of training/steps.py (which buffers, which optimizer state, the schedule, the per-epoch
totals, what the layers hold afterwards). tests/training/test_gpu_training.py compares the CUDA
kernel itself with the planned steps on a GPU, tests/backends/cuda/test_cuda_on_cpu.py on the CPU."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from support.backends import OneKernelNumpy, PlanningNumpy
from support.training import CPU_TRAINER, OPTIMIZERS, made_steps

import gpunn as nn
from gpunn.backends import get_backend, jit
from gpunn.backends.cuda.launch import one_kernel_bytes
from gpunn.training import steps


def book_model(make_opt, backend, dtype="float64", sizes=(2, 16, 3)):
    n_in, hidden, k = sizes
    model = nn.Sequential([nn.Dense(n_in, hidden, init="he", seed=1), nn.ReLU(),
                           nn.Dense(hidden, k, seed=3)])
    model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend=backend, dtype=dtype)
    return model


RULES = OPTIMIZERS + [lambda: nn.SGD(lr=0.5, decay=1e-3)]


@pytest.mark.parametrize("make_opt", RULES)
@pytest.mark.parametrize("batch_size", [None, 64])
def test_one_kernel_contract_trains_as_the_planned_steps(make_opt, batch_size, monkeypatch):
    monkeypatch.setattr(steps, "ONE_KERNEL_EPOCHS_PER_LAUNCH", 64)  # 150 epochs: three launches
    one = OneKernelNumpy()
    trains_as_the_planned_steps(make_opt, batch_size, one)
    assert one.launches == ([64, 64, 22] if batch_size is None else [1] * 12)


def test_a_full_batch_launch_of_the_one_kernel_trainer_takes_up_to_1024_epochs():
    """Planned graphs hold 64 epochs; one kernel launch takes 1024, and the same history."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    one = OneKernelNumpy()
    histories = [book_model(nn.Adam, backend).fit(X, y, epochs=2100, batch_size=None,
                                                  verbose=0).history
                 for backend in (one, PlanningNumpy())]
    assert one.launches == [1024, 1024, 52]
    for key in histories[0]:
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-7)


@CPU_TRAINER
@pytest.mark.parametrize("make_opt", RULES)
@pytest.mark.parametrize("batch_size", [None, 64])
@pytest.mark.parametrize("sizes", [(2, 16, 3), (4, 8, 12)])
def test_the_compiled_cpu_trainer_trains_as_the_planned_steps(make_opt, batch_size, sizes):
    """gpunn/backends/jit.py (numba): the NumPy backend as it comes, the one-kernel trainer on;
    for the spiral's 2 inputs and 3 classes, and for 4 inputs and 12 classes (jit.COLUMNS_UP_TO),
    the trainer written out for them over columns of samples."""
    assert sizes[0] + sizes[2] <= jit.COLUMNS_UP_TO
    trains_as_the_planned_steps(make_opt, batch_size, "numpy", sizes)


@CPU_TRAINER
@pytest.mark.parametrize("make_opt", RULES)
@pytest.mark.parametrize("batch_size", [None, 64])
@pytest.mark.parametrize("sizes", [(2, 16, 3), (4, 8, 12)])
def test_the_compiled_cpu_trainer_trains_as_the_planned_steps_in_float32(make_opt, batch_size,
                                                                         sizes):
    """float32, where the trainer's softmax takes jit_math's exp and log, not the C library's
    (tests/backends/test_jit_math.py checks them to 1 ulp): what the planned steps leave after
    30 epochs, to float32 rounding. Not more epochs: float32 runs part from each other by then
    (a relative difference of 0.1 to 1 at 100 epochs, for the NumPy steps against the trainer
    with math.exp and math.log as much as with these)."""
    trains_as_the_planned_steps(make_opt, batch_size, "numpy", sizes, "float32",
                                close_in_norm, epochs=30)


def close_in_norm(b, a, atol=None):
    """float32 sums in another order: within 1e-4 of the planned array's size (measured at 30
    epochs: at most 1.9e-5, with the C library's exp and log as with jit_math's); ``atol``, the
    element-wise check's, is not used."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(b - a) <= 1e-4 * np.linalg.norm(a), (b, a)


def close_elementwise(b, a, atol=1e-10):
    np.testing.assert_allclose(b, a, rtol=1e-7, atol=atol)


def trains_as_the_planned_steps(make_opt, batch_size, one_kernel_backend, sizes=(2, 16, 3),
                                dtype="float64", close=close_elementwise, epochs=None):
    """What the one-kernel trainer leaves after ``epochs`` (unless given, 150 full-batch or 4 of
    batches of 64) against what the planned steps leave: every array ``close`` to the planned
    one, and the same count of iterations."""
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    if sizes[0] != 2:  # more inputs and classes: the spiral's points, features and labels spread
        rng = np.random.default_rng(5)
        X = np.tanh(X @ rng.standard_normal((2, sizes[0])))
        y = (y * 5 + rng.integers(0, 5, y.size)) % sizes[2]
    if epochs is None:
        epochs = 150 if batch_size is None else 4
        if sizes[0] != 2 and batch_size is None:
            epochs = 80  # RMSprop on the wider network parts from the planned steps by 1e-6 at 150
    planned = book_model(make_opt, PlanningNumpy(), dtype, sizes)
    one_kernel = book_model(make_opt, one_kernel_backend, dtype, sizes)
    histories = [m.fit(X, y, epochs=epochs, batch_size=batch_size, seed=3, verbose=0).history
                 for m in (planned, one_kernel)]
    assert set(made_steps(one_kernel).values()) == {"one-kernel"}
    assert set(made_steps(planned).values()) == {"planned"}
    for a, b in zip(planned.get_params(), one_kernel.get_params()):
        close(b, a)
    for key in histories[0]:
        close(np.asarray(histories[1][key]), np.asarray(histories[0][key]), atol=0)
    assert planned.optimizer.iterations == one_kernel.optimizer.iterations
    for name in planned.optimizer.state_names:
        close(one_kernel.optimizer.state[name], planned.optimizer.state[name])
    close(one_kernel.grads, planned.grads)
    # What the last step leaves in the layers and the loss, as the planned step leaves it.
    pairs = [(planned.layers[0].output, one_kernel.layers[0].output),
             (planned.layers[2].output, one_kernel.layers[2].output),
             (planned.layers[2].dinputs, one_kernel.layers[2].dinputs),
             (planned.loss.output, one_kernel.loss.output),
             (planned.loss.dinputs, one_kernel.loss.dinputs)]
    for a, b in pairs:
        close(b, a)


def test_only_the_books_shape_takes_the_one_kernel_path():
    deeper = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 8), nn.ReLU(), nn.Dense(8, 3)])
    deeper.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend=OneKernelNumpy())
    assert steps.why_not(deeper.network, "one-kernel", 300) == \
        "the one-kernel trainer takes Dense -> ReLU -> Dense networks only"
    assert steps.choose(deeper.network, 300) == "planned"
    book = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    book.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend=OneKernelNumpy())
    assert steps.why_not(book.network, "one-kernel", 300) is None
    assert steps.choose(book.network, 300) == "one-kernel"
    book.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend=PlanningNumpy())
    assert steps.why_not(book.network, "one-kernel", 300) == \
        "switched off on the numpy backend; model.backend.one_kernel_trainer = True turns it on"


def test_the_numpy_backend_takes_the_compiled_trainer_where_numba_is_and_the_network_is_narrow(
        monkeypatch):
    """On by default: the book's shape of network, up to 16 inputs and classes together, takes
    the compiled trainer. Switched off, wider, or without numba: the NumPy backend's eager steps,
    as they always were, and why_not says why."""
    def book(n_in=2, k=3):
        model = nn.Sequential([nn.Dense(n_in, 8), nn.ReLU(), nn.Dense(8, k)])
        return model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy")

    narrow, wide = book(), book(5, 12)
    if jit.why_not() is None:
        assert steps.choose(narrow.network, 300) == "one-kernel"
        assert book(4, 12).backend.why_not("one_kernel_trainer", sizes=(4, 8, 12)) is None
    too_wide = ("the CPU one-kernel trainer takes up to 16 inputs and classes together (this "
                "network has 5 + 12); wider networks take the NumPy steps, as fast or faster there")
    assert steps.why_not(wide.network, "one-kernel", 300) == too_wide  # with numba or without
    assert steps.choose(wide.network, 300) == "eager"
    narrow.backend.one_kernel_trainer = False
    assert steps.choose(narrow.network, 300) == "eager"
    assert steps.why_not(narrow.network, "one-kernel", 300) == \
        "switched off on the numpy backend; model.backend.one_kernel_trainer = True turns it on"
    narrow.backend.one_kernel_trainer = True
    monkeypatch.setattr(jit, "why_not", lambda: 'needs numba (pip install "gpunn[jit]"; no numba here)')
    assert steps.why_not(narrow.network, "one-kernel", 300) == \
        'the CPU one-kernel trainer needs numba (pip install "gpunn[jit]"; no numba here)'
    assert steps.why_not(narrow.network, "planned", 300) == \
        "the numpy backend takes each step as it comes (planned steps pay where they are " \
        "replayed as device graphs)"
    assert steps.choose(narrow.network, 300) == "eager"


def test_a_network_too_wide_for_the_compiled_trainer_trains_as_with_it_switched_off():
    """5 inputs and 12 classes: the eager NumPy steps, the same bits as with the trainer off."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)), rng.integers(0, 12, 40)
    models = []
    for on in (True, False):
        model = book_model(nn.Adam, "numpy", sizes=(5, 8, 12))
        model.backend.one_kernel_trainer = on
        model.fit(X, y, epochs=5, batch_size=16, seed=0, verbose=0)
        models.append(model)
    assert set(made_steps(models[0]).values()) == {"eager"}
    for a, b in zip(models[0].get_params(), models[1].get_params()):
        np.testing.assert_array_equal(a, b)


def test_shared_memory_of_the_books_run():
    """The spiral network on 300 samples: 387 parameters, about 96 KiB in float32, within the
    227 KiB an H100 or H200 block may opt into (and over the 48 KiB default). Its 2 inputs have
    dW1 summed with the hidden gradient: 3 values of scratch a thread, not 1. Its 3 classes have
    W2 in rows padded to four (64 x 4); rows of H are 65 apart, an odd number with room for a
    column of ones (11 for 9 hidden units)."""
    need = one_kernel_bytes(300, (2, 64, 3), np.float32)
    assert need == 8 * (64 + 8) + 4 * (64 * 4 + 300 * (2 + 65 + 3) + 4 * 387 + 3 * 512)
    assert one_kernel_bytes(300, (5, 64, 3), np.float32) == \
        8 * (64 + 8) + 4 * (64 * 4 + 300 * (5 + 65 + 3) + 4 * (5 * 64 + 64 + 64 * 3 + 3) + 512)
    assert one_kernel_bytes(300, (2, 9, 3), np.float32) == \
        8 * (64 + 8) + 4 * (9 * 4 + 300 * (2 + 11 + 3) + 4 * (2 * 9 + 9 + 9 * 3 + 3) + 3 * 512)
    assert one_kernel_bytes(300, (2, 64, 6), np.float32) == \
        8 * (64 + 8) + 4 * (300 * (2 + 65 + 6) + 4 * (2 * 64 + 64 + 64 * 6 + 6) + 3 * 512)
    assert 48 << 10 < need < 227 << 10


@CPU_TRAINER
def test_the_compiled_cpu_trainer_diverges_as_the_planned_steps_do():
    """A NaN loss (float32 overflow at lr 1e30) stops training at the same epoch with the same
    message, and the rollback leaves the same finite parameters."""
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    outcomes = []
    for backend in (PlanningNumpy(), get_backend("numpy").configured(one_kernel_trainer=True)):
        model = book_model(lambda: nn.SGD(lr=1e30), backend, dtype="float32")
        with np.errstate(all="ignore"), pytest.raises(FloatingPointError) as caught:
            model.fit(X, y, epochs=300, batch_size=None, verbose=0)
        outcomes.append((str(caught.value), model.get_params()))
    assert outcomes[0][0] == outcomes[1][0] and "the loss became nan at epoch 2" in outcomes[0][0]
    for a, b in zip(outcomes[0][1], outcomes[1][1]):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(b, a, rtol=1e-6)


@CPU_TRAINER
@pytest.mark.parametrize("dtype, make_opt, epochs, tolerance", [
    ("float64", lambda: nn.Adam(lr=0.05, decay=5e-7), 30, 1e-12),
    ("float32", lambda: nn.SGD(lr=1.0), 100, 1e-5)])
def test_the_compiled_cpu_trainer_agrees_with_the_numpy_steps_on_the_books_run(
        dtype, make_opt, epochs, tolerance):
    """The book's network and data against the NumPy backend's own steps (sums in another
    order): float64 losses within 1e-12, float32 within 1e-5, over the epochs where that can
    hold. The run is chaotic: later, any change of rounding grows (measured, float64 Adam:
    1.5e-13 by epoch 30, 5e-11 by 100, 3e-7 by 300, then O(1e-2)), for the NumPy path against
    itself summed in another order as much as for this one."""
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    losses = []
    for on in (False, True):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend="numpy", dtype=dtype)
        model.backend.one_kernel_trainer = on
        assert steps.choose(model.network, 300) == ("one-kernel" if on else "eager")
        losses.append(model.fit(X, y, epochs=epochs, batch_size=None, verbose=0).history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=0, atol=tolerance)


@CPU_TRAINER
def test_the_compiled_cpu_trainer_flushes_denormals_and_only_while_it_runs():
    """A class 95 below the others in float32 has a probability of exp(-95) = 5e-42 and
    gradients smaller still, denormals: the NumPy steps keep them, the compiled trainer
    (denormals.flushed()) makes them 0, and nothing else moves. Afterwards NumPy's arithmetic
    has its denormals back."""
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    grads = []
    for on in (False, True):
        model = book_model(lambda: nn.SGD(lr=0.1), "numpy", dtype="float32")
        model.layers[2].biases[:] = [0.0, -95.0, 0.0]  # y has no class 1 here, so no clip
        model.backend.one_kernel_trainer = on
        model.fit(X[y != 1], y[y != 1], epochs=1, batch_size=None, verbose=0)
        assert set(made_steps(model).values()) == {"one-kernel" if on else "eager"}
        grads.append((model.layers[2].dweights.copy(), model.layers[2].dbiases.copy()))
    tiny = np.finfo(np.float32).tiny
    (dweights, dbiases), (flushed_dweights, flushed_dbiases) = grads
    assert 0 < dbiases[0, 1] < tiny and (np.abs(dweights[:, 1]) < tiny).all()
    assert dweights[:, 1].any()
    assert flushed_dbiases[0, 1] == 0 and not flushed_dweights[:, 1].any()
    np.testing.assert_allclose(flushed_dweights, dweights, rtol=1e-5, atol=tiny)
    # Each bias gradient sums 100 terms of either sign in the trainer's order, not NumPy's: the
    # two agree to the terms' roundings (about 1e-7 here), not to the small sum's (-2.3e-3 came
    # out 1.4e-5 apart, relatively, on one CPU). The flushed entry is checked above.
    np.testing.assert_allclose(flushed_dbiases, dbiases, rtol=1e-5, atol=1e-7)
    assert np.float32(1e-30) * np.float32(1e-10) > 0


def test_the_written_out_trainer_reads_as_its_docstring_shows():
    """jit.columns_source's docstring shows the book's forward loop: it is the generated one,
    line for line (inside the epoch loop, 8 spaces in)."""
    shown = [line for line in textwrap.dedent(jit.columns_source.__doc__.split("::")[1])
             .strip("\n").splitlines() if line.strip() != "..."]
    source = jit.columns_source(2, 3).splitlines()
    start = source.index(" " * 8 + shown[0])
    assert source[start:start + len(shown)] == [" " * 8 + line for line in shown]
