"""The contenders: gpunn on each backend and path, the book's code ported to NumPy, PyTorch
(eager, and with the whole step in a CUDA graph) and JAX (jit). Each makes a ``Run`` of the same
network from the same initial weights on the same data, with SGD at the same learning rate.
Beside them, the step's GEMMs alone (``step_gemms_run``): a floor, not a contender."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import SGD, Adam, Dense, ReLU, Sequential, SoftmaxCrossEntropy, set_seed
from ..backends import Backend, get_backend, passes
from ..backends.bf16 import BF16_BITS
from ..backends.cuda.launch import NARROW_OUTPUTS
from ..training import steps
from ..training.batches import Batch
from ..training.data import data_for
from .workloads import LR, STEP_GEMMS, Workload


@dataclass
class Run:
    """One contender on one workload: a training step, a wait for the device, and the loss."""

    step: Callable[[], Any]
    sync: Callable[[], Any]
    loss: Callable[[], float | None]


class Skip(Exception):
    """A contender that cannot run here; reported as skipped with the reason."""


def gpunn_run(backend: str, epilogues: str = "auto", one_kernel: bool = False,
              tune_gemms: bool | None = None, narrow: bool = True, overlap: bool = False):
    """gpunn on ``backend``; on CuPy, ``epilogues`` is the model's epilogue_policy ("never": the
    separate kernels only, to show what the cuBLASLt epilogues add) and ``tune_gemms`` its
    option of that name where given (None: the backend's default, tuned; False: cuBLAS's own
    choice, to show what tuning adds); ``narrow`` False turns narrow_kernels off (every product
    in GEMMs, to show what those kernels add; Skip where the output layer is too wide to take
    them); ``overlap`` True turns overlap_weight_grads on (the weight gradients beside the
    gradients handed down, on a second stream); ``one_kernel`` its
    one_kernel_trainer (Dense -> ReLU -> Dense only; on NumPy the numba-compiled one), all set
    before the step is planned."""
    def make(w: Workload, params, X, y, precision: str, device: str) -> Run:
        model = gpunn_model(w, params, backend, precision)
        bk = model.backend
        if backend == "cupy":
            bk.epilogue_policy = epilogues
            if tune_gemms is not None:
                bk.tune_gemms = tune_gemms
            if not narrow:
                if w.sizes[-1] > NARROW_OUTPUTS:
                    raise Skip(f"the output layer's {w.sizes[-1]} outputs are more than the narrow "
                               f"kernels take ({NARROW_OUTPUTS}): the same as gpunn-cupy")
                bk.narrow_kernels = False
            bk.overlap_weight_grads = overlap
        use_one_kernel(model, one_kernel, len(y))
        step = model.prepare_step(X, y)
        return Run(step, bk.synchronize, lambda: model.evaluate(X, y)["loss"])
    return make


def backend_for(name: str, precision: str) -> Backend:
    """gpunn's ``name`` backend, or Skip (the row, not the whole suite) where it cannot run
    ``precision`` here."""
    bk = get_backend(name)
    if precision != "fp32" and bk.why_not(precision):
        raise Skip(bk.why_not(precision))
    return bk


def gpunn_model(w: Workload, params: list, backend: str, precision: str) -> Sequential:
    """The workload's network in gpunn, from ``params``, compiled with SGD."""
    bk = backend_for(backend, precision)
    layers: list = []
    for i, (a, b) in enumerate(zip(w.sizes[:-1], w.sizes[1:])):
        layers += [Dense(a, b)] + ([ReLU()] if i < len(w.sizes) - 2 else [])
    model = Sequential(layers)
    model.set_params(params)
    model.compile(SoftmaxCrossEntropy(), SGD(lr=LR), backend=bk, precision=precision)
    # The steady state of a long run: on the CPU, with the compiled element-wise passes (which
    # a process otherwise starts after a billion elements through NumPy's calls: passes.py).
    passes.start_now()
    # Planned steps (cuBLAS and kernels; on the CPU the NumPy steps) unless a row asks for the
    # one-kernel trainer, which is on by default on a GPU and, with numba, on the CPU: gpunn-<backend>,
    # its streamed row and its op profile time the same path.
    model.backend.one_kernel_trainer = False
    return model


def use_one_kernel(model: Sequential, on: bool, rows: int) -> None:
    """Switch the model's one-kernel trainer on or off; Skip (the row) where it is asked for and
    cannot take batches of ``rows`` samples here."""
    model.backend.one_kernel_trainer = on
    reason = steps.why_not(model.network, "one-kernel", rows) if on else None
    if reason:
        raise Skip(reason)


def book_model(backend: str, one_kernel: bool, rows: int) -> Sequential:
    """The book's spiral network, seeded, compiled with its Adam (lr 0.05, decay 5e-7) on
    ``backend``, with the one-kernel trainer on (or Skip, where it cannot take ``rows``) or off."""
    set_seed(0)
    model = Sequential([Dense(2, 64), ReLU(), Dense(64, 3)])
    model.compile(SoftmaxCrossEntropy(), Adam(lr=0.05, decay=5e-7), backend=backend)
    use_one_kernel(model, one_kernel, rows)
    return model


#: Batches of host data a streamed row cycles through (each a copy of the workload's batch).
STREAMED_BATCHES = 4


def gpunn_streamed_run(backend: str, upload_thread: bool | None = None):
    """gpunn on ``backend`` with its data in host memory, streamed a batch at a time (fit's path
    for data bigger than the device): what the copies cost on top of the step. ``upload_thread``:
    the batches read and copied into pinned memory on worker threads or not (None: the
    backend's default)."""
    def make(w: Workload, params, X, y, precision: str, device: str) -> Run:
        model = gpunn_model(w, params, backend, precision)
        if upload_thread is not None:
            model.backend.upload_thread = upload_thread
        Xh = np.ascontiguousarray(np.tile(X, (STREAMED_BATCHES, 1)))
        yh = np.tile(y, STREAMED_BATCHES)
        data = data_for(model.network, Xh, yh, stream=True)
        step = model.steps.get(w.batch)
        feed = data.feed(itertools.cycle([Batch(i * w.batch, (i + 1) * w.batch)
                                          for i in range(STREAMED_BATCHES)]))

        def one_step() -> None:
            _, loadable = next(feed)
            step.load(*loadable)
            step.run()

        return Run(one_step, model.backend.synchronize, lambda: model.evaluate(X, y)["loss"])
    return make


def numpy_book_run(w: Workload, params, X, y, precision: str, device: str) -> Run:
    """The book's code as a reader would port it: np.dot, new arrays every step."""
    params = [p.copy() for p in params]
    n = len(y)

    def forward():
        acts = [X]
        for i in range(0, len(params), 2):
            z = np.dot(acts[-1], params[i]) + params[i + 1]
            acts.append(np.maximum(0, z) if i < len(params) - 2 else z)
        z = acts[-1]
        e = np.exp(z - np.max(z, axis=1, keepdims=True))
        return acts, e / np.sum(e, axis=1, keepdims=True)

    def step():
        acts, p = forward()
        d = p.copy()
        d[range(n), y] -= 1
        d = d / n
        for i in range(len(params) - 2, -1, -2):
            W = params[i]
            dW, db = np.dot(acts[i // 2].T, d), np.sum(d, axis=0, keepdims=True)
            if i > 0:
                d = np.dot(d, W.T)
                d[acts[i // 2] <= 0] = 0
            params[i] = W - LR * dW
            params[i + 1] = params[i + 1] - LR * db

    def loss():
        _, p = forward()
        return float(np.mean(-np.log(np.clip(p[range(n), y], 1e-7, 1 - 1e-7))))

    return Run(step, lambda: None, loss)


def step_gemms_run(w: Workload, params, X, y, precision: str, device: str) -> Run:
    """Not a contender but a floor: the GEMMs of gpunn's training step alone, at its shapes, in
    its order and through the same ``Backend.gemm`` (forward inputs @ weights; backward
    inputs.T @ dvalues and, above the first layer, dvalues @ weights.T), with no bias, activation,
    loss or update. No implementation that calls this BLAS for these GEMMs steps faster, so its
    share of the GEMM ceiling says how much of a contender's gap to the ceiling is the other work
    and how much is these shapes. (On a GPU, cuBLAS alone: gpunn's cuBLASLt epilogues add the
    bias and ReLU work to some of these GEMMs.)"""
    bk = backend_for("cupy" if device == "gpu" else "numpy", precision).configured(precision=precision)
    xp = bk.xp

    def operand(shape: tuple[int, int]) -> Any:
        # Any normal values time the same; bf16 GEMMs read bfloat16 copies, as a bf16 model's do.
        m = xp.full(shape, 0.5, np.float32)
        return bk.to_bf16(m, out=xp.empty(shape, BF16_BITS)) if precision == "bf16" else m

    sizes, n = w.sizes, w.batch
    weights = [operand(p.shape) for p in params[0::2]]
    inputs = [operand((n, a)) for a in sizes[:-1]]  # what each layer reads going forward
    dvalues = [operand((n, b)) for b in sizes[1:]]  # the gradient each layer gets going back
    outputs = [xp.empty((n, b), np.float32) for b in sizes[1:]]
    dweights = [xp.empty((a, b), np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    dinputs = [None] + [xp.empty((n, a), np.float32) for a in sizes[1:-1]]  # none for the data

    def step() -> None:
        for i in range(len(weights)):
            bk.gemm(inputs[i], weights[i], out=outputs[i])
        for i in reversed(range(len(weights))):
            bk.gemm(inputs[i], dvalues[i], out=dweights[i], trans_a=True)
            if i > 0:  # the first layer hands no gradient to the data
                bk.gemm(dvalues[i], weights[i], out=dinputs[i], trans_b=True)

    return Run(step, bk.synchronize, lambda: None)


def torch_run(graph: bool):
    def make(w: Workload, params, X, y, precision: str, device: str) -> Run:
        import torch

        cuda = device == "gpu"
        if cuda and not torch.cuda.is_available():
            raise Skip(f"this PyTorch ({torch.__version__}) has no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        device = "cuda" if cuda else "cpu"
        layers: list = []
        for i in range(0, len(params), 2):
            lin = torch.nn.Linear(*params[i].shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(params[i].T.copy()))
                lin.bias.copy_(torch.from_numpy(params[i + 1].ravel()))
            layers += [lin] + ([torch.nn.ReLU()] if i < len(params) - 2 else [])
        model = torch.nn.Sequential(*layers).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
        loss_fn = torch.nn.CrossEntropyLoss()
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        # bf16: PyTorch's own mixed precision (autocast: bf16 GEMMs, float32 weights); no
        # weight cache, which a CUDA graph would freeze.
        autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16",
                                  cache_enabled=False)

        def step():
            opt.zero_grad(set_to_none=not graph)
            with autocast:
                loss = loss_fn(model(Xt), yt)
            loss.backward()
            opt.step()

        def loss():
            with torch.no_grad():
                return float(loss_fn(model(Xt), yt))

        if not graph:
            return Run(step, sync, loss)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up on a side stream, as torch.cuda.graphs asks
            step()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        return Run(g.replay, sync, loss)
    return make


def jax_run(w: Workload, params, X, y, precision: str, device: str) -> Run:
    import jax
    import jax.numpy as jnp

    if (jax.default_backend() == "gpu") != (device == "gpu"):
        raise Skip(f"JAX runs on its default backend ({jax.default_backend()}), not {device}")
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if precision == "tf32" else "float32")
    state = {"params": [jnp.asarray(p) for p in params]}
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def matmul(a, b):
        if precision != "bf16":
            return a @ b
        # bf16 operands, float32 sums and result: what gpunn's bf16 GEMMs do
        return jnp.dot(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                       preferred_element_type=jnp.float32)

    def loss_of(ps):
        h = Xj
        for i in range(0, len(ps), 2):
            h = matmul(h, ps[i]) + ps[i + 1]
            if i < len(ps) - 2:
                h = jax.nn.relu(h)
        return -jnp.take_along_axis(jax.nn.log_softmax(h), yj[:, None], axis=1).mean()

    @jax.jit
    def train(ps):
        grads = jax.grad(loss_of)(ps)
        return [p - LR * g for p, g in zip(ps, grads)]

    loss_jit = jax.jit(loss_of)

    def step():
        state["params"] = train(state["params"])

    return Run(step, lambda: jax.block_until_ready(state["params"]),
               lambda: float(loss_jit(state["params"])))


def contenders(backends: list[str], peers: list[str], device: str) -> dict[str, tuple[str, Any]]:
    """impl name -> (backend label, factory) for what was asked and can run on ``device``."""
    out: dict[str, tuple[str, Any]] = {}
    for b in backends:
        if (b == "cupy") == (device == "gpu"):
            out[f"gpunn-{b}"] = (b, gpunn_run(b))
            out[f"gpunn-{b}-streamed"] = (b, gpunn_streamed_run(b))
    if device == "gpu" and "cupy" in backends:
        out["gpunn-cupy-separate"] = ("cupy", gpunn_run("cupy", epilogues="never"))
        out["gpunn-cupy-untuned"] = ("cupy", gpunn_run("cupy", tune_gemms=False))
        out["gpunn-cupy-gemms"] = ("cupy", gpunn_run("cupy", narrow=False))
        out["gpunn-cupy-overlap"] = ("cupy", gpunn_run("cupy", overlap=True))
        out["gpunn-cupy-one-kernel"] = ("cupy", gpunn_run("cupy", one_kernel=True))
        out["gpunn-cupy-streamed-unthreaded"] = ("cupy", gpunn_streamed_run("cupy", upload_thread=False))
    if device == "cpu" and "numpy" in backends:
        out["gpunn-numpy-one-kernel"] = ("numpy", gpunn_run("numpy", one_kernel=True))
    if device == "cpu" and "numpy-book" in peers:
        out["numpy-book"] = ("numpy", numpy_book_run)
    if "pytorch" in peers:
        out["pytorch"] = ("torch", torch_run(graph=False))
        if device == "gpu":  # PyTorch's best: the whole step in a CUDA graph
            out["pytorch-graph"] = ("torch", torch_run(graph=True))
    if "jax" in peers:
        out["jax"] = ("jax", jax_run)
    out[STEP_GEMMS] = ("numpy" if device == "cpu" else "cupy", step_gemms_run)
    return out
