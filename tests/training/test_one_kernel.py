"""The one-kernel trainer's contract (``Backend.train_in_one_kernel``), checked on the CPU: a NumPy
backend whose ``train_in_one_kernel`` follows kernels.cu's kernel step by step (support.backends'
OneKernelNumpy) must train the book's network exactly as the planned steps do, through the real
plumbing of training/steps.py (which buffers, which optimizer state, the schedule, the per-epoch
totals, what the layers hold afterwards). tests/training/test_gpu_training.py compares the CUDA
kernel itself with the planned steps on a GPU, tests/backends/cuda/test_cuda_on_cpu.py on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from support.backends import OneKernelNumpy, PlanningNumpy
from support.training import OPTIMIZERS, made_steps

import gpunn as nn
from gpunn.backends.cuda.launch import one_kernel_bytes
from gpunn.training import steps


def book_model(make_opt, backend, dtype="float64"):
    model = nn.Sequential([nn.Dense(2, 16, init="he", seed=1), nn.ReLU(), nn.Dense(16, 3, seed=3)])
    model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend=backend, dtype=dtype)
    return model


@pytest.mark.parametrize("make_opt", OPTIMIZERS + [lambda: nn.SGD(lr=0.5, decay=1e-3)])
@pytest.mark.parametrize("batch_size", [None, 64])
def test_one_kernel_contract_trains_as_the_planned_steps(make_opt, batch_size):
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    epochs = 150 if batch_size is None else 4  # full batch: launches of 64, 64 and 22 epochs
    planned = book_model(make_opt, PlanningNumpy())
    one = OneKernelNumpy()
    one_kernel = book_model(make_opt, one)
    histories = [m.fit(X, y, epochs=epochs, batch_size=batch_size, seed=3, verbose=0).history
                 for m in (planned, one_kernel)]
    assert one.launches == ([64, 64, 22] if batch_size is None else [1] * 12)
    assert set(made_steps(one_kernel).values()) == {"one-kernel"}
    assert set(made_steps(planned).values()) == {"planned"}
    for a, b in zip(planned.get_params(), one_kernel.get_params()):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-10)
    for key in histories[0]:
        np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-7)
    assert planned.optimizer.iterations == one_kernel.optimizer.iterations
    for name in planned.optimizer.state_names:
        np.testing.assert_allclose(one_kernel.optimizer.state[name], planned.optimizer.state[name],
                                   rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(one_kernel.grads, planned.grads, rtol=1e-7, atol=1e-10)
    # What the last step leaves in the layers and the loss, as the planned step leaves it.
    pairs = [(planned.layers[0].output, one_kernel.layers[0].output),
             (planned.layers[2].output, one_kernel.layers[2].output),
             (planned.layers[2].dinputs, one_kernel.layers[2].dinputs),
             (planned.loss.output, one_kernel.loss.output),
             (planned.loss.dinputs, one_kernel.loss.dinputs)]
    for a, b in pairs:
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-10)


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
        "the numpy backend has no one-kernel trainer"


def test_shared_memory_of_the_books_run():
    """The spiral network on 300 samples: 387 parameters, about 99 KiB in float32, within the
    227 KiB an H100 or H200 block may opt into (and over the 48 KiB default)."""
    need = one_kernel_bytes(300, (2, 64, 3), np.float32)
    assert need == 8 * (512 + 8) + 4 * (300 * (2 + 65 + 3) + 4 * 387 + 512)
    assert 48 << 10 < need < 227 << 10
