"""The one-kernel trainer's contract (``Backend.train_small_net``), checked on the CPU: a NumPy
backend whose ``train_small_net`` follows kernels.cu's train_small_net step by step must train the
book's network exactly as the planned steps do, through the model's real plumbing (which buffers,
which optimizer state, the schedule, the per-epoch totals, what the layers hold afterwards).
tests/test_gpu.py compares the CUDA kernel itself with the planned steps on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from test_plans import OPTIMIZERS

import gpunn as nn
from gpunn.backends.cupy_backend import CupyBackend
from gpunn.backends.numpy_backend import NumpyBackend


class SmallNetNumpy(NumpyBackend):
    """train_small_net in NumPy, in the order of the CUDA kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: list[int] = []

    def fits_small_net(self, rows, sizes, dtype):
        return True

    def train_small_net(self, X, y, params, grads, states, schedule, totals, epochs, rule, outs):
        self.launches.append(epochs)
        code, hyper, epsilon = rule
        n, n_in = X.shape
        hidden, k = outs["hidden"].shape[1], outs["logits"].shape[1]
        o1 = n_in * hidden
        o2, o3 = o1 + hidden, o1 + hidden + hidden * k
        W1, b1 = params[:o1].reshape(n_in, hidden), params[o1:o2]
        W2, b2 = params[o2:o3].reshape(hidden, k), params[o3:]
        rows = np.arange(n)
        for epoch in range(epochs):
            H = np.maximum(X @ W1 + b1, 0)
            Z = H @ W2 + b2
            P = np.exp(Z - Z.max(axis=1, keepdims=True))
            P /= P.sum(axis=1, keepdims=True)
            losses = -np.log(np.clip(P[rows, y], 1e-7, 1 - 1e-7))
            D = P.copy()
            D[rows, y] -= 1
            D *= P.dtype.type(1.0 / n)
            totals[epoch] += [losses.sum(), (Z.argmax(axis=1) == y).sum()]
            dH = (D @ W2.T) * (H > 0)
            grads[...] = np.concatenate([(X.T @ dH).ravel(), dH.sum(axis=0), (H.T @ D).ravel(),
                                         D.sum(axis=0)])
            t = schedule[0]  # advance(): lr_t, Adam's corrections for step t + 1, t += 1
            schedule[5] = schedule[1] / (1.0 + schedule[2] * t)
            schedule[6] = 1.0 / (1.0 - schedule[3] ** (t + 1))
            schedule[7] = 1.0 / (1.0 - schedule[4] ** (t + 1))
            schedule[0] = t + 1
            lr, g = params.dtype.type(schedule[5]), grads
            if code == 0:
                params -= lr * g
            elif code == 1:
                u = states[0]
                u[...] = params.dtype.type(hyper) * u - lr * g
                params += u
            elif code == 2:
                c = states[0]
                c[...] = c + g * g if hyper < 0 else hyper * c + (1 - hyper) * g * g
                params -= lr * g / (np.sqrt(c) + epsilon)
            else:
                m, v = states
                m[...] = schedule[3] * m + (1 - schedule[3]) * g
                v[...] = schedule[4] * v + (1 - schedule[4]) * g * g
                params -= lr * (m * schedule[6]) / (np.sqrt(v * schedule[7]) + epsilon)
        for name, value in (("hidden", H), ("dhidden", dH), ("logits", Z), ("probs", P),
                            ("dlogits", D), ("losses", losses)):
            outs[name][...] = value.reshape(outs[name].shape)


def book_model(make_opt, backend, dtype="float64"):
    model = nn.Sequential([nn.Dense(2, 16, init="he", seed=1), nn.ReLU(), nn.Dense(16, 3, seed=3)])
    model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend=backend, dtype=dtype)
    model._force_plans = True
    return model


@pytest.mark.parametrize("make_opt", OPTIMIZERS + [lambda: nn.SGD(lr=0.5, decay=1e-3)])
@pytest.mark.parametrize("batch_size", [None, 64])
def test_one_kernel_contract_trains_as_the_planned_steps(make_opt, batch_size):
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    epochs = 150 if batch_size is None else 4  # full batch: launches of 64, 64 and 22 epochs
    planned = book_model(make_opt, "numpy")
    small = SmallNetNumpy()
    one_kernel = book_model(make_opt, small)
    histories = [m.fit(X, y, epochs=epochs, batch_size=batch_size, seed=3, verbose=0).history
                 for m in (planned, one_kernel)]
    assert small.launches == ([64, 64, 22] if batch_size is None else [1] * 12)
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
    small = SmallNetNumpy()
    deeper = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 8), nn.ReLU(), nn.Dense(8, 3)])
    deeper.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend=small)
    assert not deeper._small_net(300)
    book = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    book.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend=small)
    assert book._small_net(300)
    book.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="numpy")
    assert not book._small_net(300)  # the NumPy backend has no one-kernel trainer


def test_shared_memory_of_the_books_run():
    """The spiral network on 300 samples: 387 parameters, about 99 KiB in float32, within the
    227 KiB an H100 or H200 block may opt into (and over the 48 KiB default)."""
    need = CupyBackend.small_net_bytes(300, (2, 64, 3), np.float32)
    assert need == 8 * (512 + 8) + 4 * (300 * (2 + 65 + 3) + 4 * 387 + 512)
    assert 48 << 10 < need < 227 << 10
