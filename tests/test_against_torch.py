"""25-step training trajectories on random networks, float64, against PyTorch as an independent
reference (gradients, regularization, each optimizer with the book's decay). PyTorch is a peer,
never a dependency: without it these tests skip, saying so."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as nn

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional cross-check)")

STEPS = 25

# (gpunn optimizer, torch optimizer factory, decay): torch's SGD momentum is the book's form only
# at a constant learning rate, so that case runs without decay.
OPTIMIZERS = {
    "sgd": (lambda: nn.SGD(lr=0.5, decay=1e-2), lambda p: torch.optim.SGD(p, lr=0.5), 1e-2),
    "sgd-momentum": (lambda: nn.SGD(lr=0.1, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 0.0),
    "adagrad": (lambda: nn.Adagrad(lr=0.2, decay=1e-2, epsilon=1e-7),
                lambda p: torch.optim.Adagrad(p, lr=0.2, eps=1e-7), 1e-2),
    "rmsprop": (lambda: nn.RMSprop(lr=0.01, decay=1e-2, epsilon=1e-7, rho=0.9),
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-7), 1e-2),
    "adam": (lambda: nn.Adam(lr=0.02, decay=1e-2, epsilon=1e-7, beta_1=0.9, beta_2=0.999),
             lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.9, 0.999), eps=1e-7), 1e-2),
}
BASE_LR = {"sgd": 0.5, "sgd-momentum": 0.1, "adagrad": 0.2, "rmsprop": 0.01, "adam": 0.02}


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("net", ["relu-sce", "sigmoid-bce-l1l2", "deep-mse"])
def test_trajectory_matches_pytorch(opt_name, net):
    rng = np.random.default_rng(hash((opt_name, net)) % 2**32)
    make_opt, make_torch_opt, decay = OPTIMIZERS[opt_name]
    n = 16
    reg = dict(weight_regularizer_l1=1e-3, weight_regularizer_l2=1e-2, bias_regularizer_l1=2e-3,
               bias_regularizer_l2=3e-2) if "l1l2" in net else {}
    if net == "relu-sce":
        layers = [nn.Dense(3, 7, init="he"), nn.ReLU(), nn.Dense(7, 4, init="he")]
        loss, y = nn.SoftmaxCrossEntropy(), rng.integers(0, 4, n)
    elif net == "sigmoid-bce-l1l2":
        layers = [nn.Dense(3, 6, init="glorot", **reg), nn.Sigmoid(), nn.Dense(6, 2, **reg), nn.Sigmoid()]
        loss, y = nn.BinaryCrossEntropy(), rng.integers(0, 2, (n, 2)).astype(float)
    else:
        layers = [nn.Dense(3, 8, init="he"), nn.ReLU(), nn.Dense(8, 8, init="he"), nn.ReLU(),
                  nn.Dense(8, 5, init="he"), nn.ReLU(), nn.Dense(5, 2, init="glorot"), nn.Linear()]
        loss, y = nn.MeanSquaredError(), rng.standard_normal((n, 2))
    X = rng.standard_normal((n, 3))
    model = nn.Sequential(layers)
    model.compile(loss, make_opt(), backend="numpy", dtype="float64")

    params = [torch.tensor(p, requires_grad=True) for p in model.get_params()]
    opt = make_torch_opt(params)
    Xt, yt = torch.tensor(X), torch.tensor(y)

    def torch_loss():
        h = Xt
        dense = iter(zip(params[::2], params[1::2]))
        for layer in layers:
            if isinstance(layer, nn.Dense):
                W, b = next(dense)
                h = h @ W + b
            elif isinstance(layer, nn.ReLU):
                h = torch.relu(h)
            elif isinstance(layer, nn.Sigmoid):
                h = torch.sigmoid(h)
        if net == "relu-sce":
            data = torch.nn.functional.cross_entropy(h, yt)
        elif net == "sigmoid-bce-l1l2":
            p = h.clamp(1e-7, 1 - 1e-7)
            data = -(yt * torch.log(p) + (1 - yt) * torch.log(1 - p)).mean()
        else:
            data = ((h - yt) ** 2).mean()
        penalty = 0
        for W, b in zip(params[::2], params[1::2]):
            penalty = penalty + reg.get("weight_regularizer_l1", 0) * W.abs().sum() \
                + reg.get("weight_regularizer_l2", 0) * (W * W).sum() \
                + reg.get("bias_regularizer_l1", 0) * b.abs().sum() \
                + reg.get("bias_regularizer_l2", 0) * (b * b).sum()
        return data + penalty

    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = BASE_LR[opt_name] / (1 + decay * step)
        opt.zero_grad()
        expected = torch_loss()
        expected.backward()
        opt.step()
        got = model.train_step(X, y)
        assert got == pytest.approx(expected.item(), rel=1e-9, abs=1e-12), f"step {step}"
    for mine, theirs in zip(model.get_params(), params):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-8, atol=1e-10)
