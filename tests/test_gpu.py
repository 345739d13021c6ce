"""On a CUDA device: the CuPy backend matches NumPy within float32 tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CUPY_PROBLEM

import gpunn as nn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")]


@pytest.mark.parametrize("make_opt", [lambda: nn.SGD(lr=0.5, momentum=0.9, decay=1e-3),
                                      lambda: nn.Adagrad(lr=0.5), lambda: nn.RMSprop(lr=0.01),
                                      lambda: nn.Adam(lr=0.02, decay=5e-7)])
def test_cupy_training_matches_numpy(make_opt):
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    results = []
    for backend in ("numpy", "cupy"):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64, init="he"), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend=backend)
        history = model.fit(X, y, epochs=50, batch_size=None, verbose=0)
        results.append((model.get_params(), history["loss"], model.predict(X)))
    (p_np, l_np, pred_np), (p_cp, l_cp, pred_cp) = results
    np.testing.assert_allclose(l_cp, l_np, rtol=2e-4, atol=1e-5)
    for a, b in zip(p_cp, p_np):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(pred_cp, pred_np, rtol=2e-3, atol=2e-4)


def test_model_moves_between_backends_and_keeps_training():
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 16), nn.ReLU(), nn.Dense(16, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend="numpy")
    model.fit(X, y, epochs=5, batch_size=None, verbose=0)
    before = model.get_params()
    model.to("cupy")
    assert model.backend.name == "cupy"
    for a, b in zip(before, model.get_params()):
        np.testing.assert_array_equal(a, b)
    model.fit(X, y, epochs=5, batch_size=32, seed=0, verbose=0)
    model.to("numpy")
    assert model.optimizer.iterations == 5 + 5 * 5
