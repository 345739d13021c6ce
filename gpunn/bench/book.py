"""The "book" workload: the whole spiral run of the book (10,001 full-batch epochs, Adam lr 0.05,
decay 5e-7), wall time, for gpunn and the peers at their best."""

from __future__ import annotations

import time

import numpy as np

from .. import datasets
from .contenders import Skip, book_model
from .workloads import BOOK_EPOCHS


def book_run(impl: str, device: str) -> float:
    """Seconds for the book's whole run (10,001 full-batch epochs, Adam lr 0.05 decay 5e-7)."""
    X, y = datasets.spiral_data(samples=100, classes=3, seed=0)
    if impl.startswith("gpunn-"):
        backend = "cupy" if impl.startswith("gpunn-cupy") else "numpy"

        def train(epochs: int) -> float:
            model = book_model(backend, impl.endswith("-one-kernel"), len(y))
            t0 = time.perf_counter()
            model.fit(X, y, epochs=epochs, batch_size=None, verbose=0)
            model.backend.synchronize()
            return time.perf_counter() - t0

        train(100)  # warm-up: kernels compile
        return train(BOOK_EPOCHS)
    if impl in ("pytorch", "pytorch-graph"):
        return _book_torch(X, y, device, graph=impl == "pytorch-graph")
    if impl == "jax":
        return _book_jax(X, y)
    raise Skip(f"{impl} has no book-run version")


def _book_torch(X, y, device: str, graph: bool) -> float:
    """PyTorch eager, or with the step in a CUDA graph and the learning rate in a device tensor
    written before each replay."""
    import torch

    dev = "cuda" if device == "gpu" else "cpu"
    if graph and dev == "cpu":
        raise Skip("a CUDA graph needs a GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    Xt = torch.tensor(X, dtype=torch.float32, device=dev)
    yt = torch.tensor(y.astype(np.int64), device=dev)
    model = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)).to(dev)
    lr = torch.tensor(0.05, device=dev) if graph else 0.05
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-7, capturable=graph)
    loss_fn = torch.nn.CrossEntropyLoss()

    def body():
        opt.zero_grad(set_to_none=not graph)
        loss_fn(model(Xt), yt).backward()
        opt.step()

    t0 = time.perf_counter()
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            body()
        for t in range(1, BOOK_EPOCHS):  # the warm-up step was epoch 0
            lr.fill_(0.05 / (1 + 5e-7 * t))
            g.replay()
    else:
        for t in range(BOOK_EPOCHS):
            opt.param_groups[0]["lr"] = 0.05 / (1 + 5e-7 * t)
            body()
    if dev == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _book_jax(X, y) -> float:
    """JAX at its best here: all 10,001 epochs inside one jitted lax.scan (compile not timed)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_default_matmul_precision", "float32")
    Xj, yj = jnp.asarray(X, jnp.float32), jnp.asarray(y.astype(np.int32))
    rng = np.random.default_rng(0)
    params = [jnp.asarray(0.01 * rng.standard_normal((2, 64)), jnp.float32), jnp.zeros(64),
              jnp.asarray(0.01 * rng.standard_normal((64, 3)), jnp.float32), jnp.zeros(3)]

    def loss(p):
        h = jax.nn.relu(Xj @ p[0] + p[1]) @ p[2] + p[3]
        return -jnp.take_along_axis(jax.nn.log_softmax(h), yj[:, None], axis=1).mean()

    def epoch(state, t):
        p, m, v = state
        g = jax.grad(loss)(p)
        lr = 0.05 / (1 + 5e-7 * t)
        m = [0.9 * a + 0.1 * b for a, b in zip(m, g)]
        v = [0.999 * a + 0.001 * b * b for a, b in zip(v, g)]
        step = t + 1.0
        p = [w - lr * (a / (1 - 0.9**step)) / (jnp.sqrt(b / (1 - 0.999**step)) + 1e-7)
             for w, a, b in zip(p, m, v)]
        return (p, m, v), None

    @jax.jit
    def train(p):
        zeros = [jnp.zeros_like(a) for a in p]
        (p, _, _), _ = jax.lax.scan(epoch, (p, zeros, zeros), jnp.arange(BOOK_EPOCHS, dtype=jnp.float32))
        return p

    jax.block_until_ready(train(params))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(train(params))
    return time.perf_counter() - t0
