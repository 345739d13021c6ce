"""``gpunn bench``: training-step throughput of gpunn's backends against PyTorch and JAX, side by
side, on the workloads of the project's performance goals.

Every contender trains the same network from the same initial weights on the same data with the
same optimizer (SGD) and precision; they are interleaved repeat by repeat in one process, so drift
on a shared machine hits all alike, and the GEMM ceiling is measured between them. Results: a
table, and optionally JSON (schema: ``SCHEMA``), Markdown and a PNG chart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

LR = 0.01


@dataclass(frozen=True)
class Workload:
    sizes: tuple[int, ...]
    batch: int
    gpu_only: bool = False

    @property
    def flops(self) -> float:
        """6 B sum(in * out) per step, less the first layer's input gradient (not computed)."""
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        return 6 * self.batch * sum(i * o for i, o in pairs) - 2 * self.batch * pairs[0][0] * pairs[0][1]


WORKLOADS = {
    "small": Workload((2, 64, 3), 300),  # the spiral network
    "medium": Workload((784, 1024, 1024, 10), 1024),
    "large": Workload((4096, 4096, 4096, 4096, 1000), 8192, gpu_only=True),
}
BOOK_EPOCHS = 10_001  # the "book" workload: the whole spiral run, Adam, full batch

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "gpunn bench results",
    "type": "object",
    "required": ["machine", "results", "skipped"],
    "properties": {
        "machine": {
            "type": "object",
            "required": ["cpu", "cpu_cores", "gpu", "python", "versions", "blas", "gemm_ceiling"],
            "properties": {
                "cpu": {"type": "string"},
                "cpu_cores": {"type": "integer"},
                "gpu": {"type": ["string", "null"]},
                "python": {"type": "string"},
                "versions": {"type": "object", "additionalProperties": {"type": "string"}},
                "blas": {"type": "array", "items": {"type": "object"}},
                "gemm_ceiling": {
                    "type": "object",
                    "description": "TFLOP/s of a large float32 GEMM per device and precision",
                    "additionalProperties": {"type": "number"},
                },
            },
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["workload", "impl", "backend", "precision", "device", "step_ms",
                             "step_ms_spread", "samples_per_s", "tflops", "ceiling_fraction",
                             "final_loss"],
                "properties": {
                    "workload": {"type": "string"},
                    "impl": {"type": "string",
                             "description": "gpunn-numpy, gpunn-cupy, gpunn-cupy-separate "
                                            "(no cuBLASLt epilogues), gpunn-cupy-one-kernel "
                                            "(the one-block trainer), pytorch, "
                                            "pytorch-graph, jax, numpy-book"},
                    "backend": {"type": "string", "description": "numpy, cupy, torch, jax"},
                    "precision": {"enum": ["fp32", "tf32"]},
                    "device": {"enum": ["cpu", "gpu"]},
                    "step_ms": {"type": "number",
                                "description": "median over repeats; for the book workload, the whole run"},
                    "step_ms_spread": {"type": "number", "description": "max - min over repeats"},
                    "samples_per_s": {"type": "number"},
                    "tflops": {"type": ["number", "null"]},
                    "ceiling_fraction": {"type": ["number", "null"]},
                    "final_loss": {"type": ["number", "null"],
                                   "description": "loss after the same few steps, before timing"},
                    "speedup_vs": {"type": "object", "additionalProperties": {"type": "number"},
                                   "description": "gpunn rows: the peer's step time over this one"},
                },
            },
        },
        "skipped": {"type": "array", "items": {"type": "object", "required": ["impl", "reason"]}},
    },
}


@dataclass
class Run:
    """One contender on one workload: a training step, a wait for the device, and the loss."""

    step: Callable[[], Any]
    sync: Callable[[], Any]
    loss: Callable[[], float]


def initial_params(sizes: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """He-initialised weights and zero biases, shared by every contender."""
    rng = np.random.default_rng(seed)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
                   np.zeros((1, b), np.float32)]
    return params


def workload_data(w: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((w.batch, w.sizes[0])).astype(np.float32)
    return X, rng.integers(0, w.sizes[-1], w.batch)


# ---- contenders --------------------------------------------------------------------------------

def gpunn_run(backend: str, epilogues: str = "auto", small_net: bool = False):
    """gpunn on ``backend``; on CuPy, ``epilogues`` is the backend's epilogue_policy ("never":
    the separate kernels only, to show what the cuBLASLt epilogues add) and ``small_net`` its
    small_net_kernel (the one-block trainer, for Dense -> ReLU -> Dense)."""
    def make(w: Workload, params, X, y, precision: str, device: str) -> Run:
        from . import Dense, ReLU, Sequential, SoftmaxCrossEntropy
        from .optimizers import SGD

        if small_net and len(w.sizes) != 3:
            raise Skip("the one-block trainer takes Dense -> ReLU -> Dense networks only")

        layers: list = []
        for i, (a, b) in enumerate(zip(w.sizes[:-1], w.sizes[1:])):
            layers += [Dense(a, b)] + ([ReLU()] if i < len(w.sizes) - 2 else [])
        model = Sequential(layers)
        model.set_params(params)
        model.compile(SoftmaxCrossEntropy(), SGD(lr=LR), backend=backend, precision=precision)
        step, bk = model.prepare_step(X, y), model.backend

        def run_step() -> None:
            if hasattr(bk, "epilogue_policy"):  # one CuPy backend serves every gpunn-cupy row
                bk.epilogue_policy = epilogues
                bk.small_net_kernel = small_net  # read when the step is first planned
            step()
        return Run(run_step, bk.synchronize, lambda: model.evaluate(X, y)["loss"])
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

        def step():
            opt.zero_grad(set_to_none=not graph)
            loss_fn(model(Xt), yt).backward()
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

    def loss_of(ps):
        h = Xj
        for i in range(0, len(ps), 2):
            h = h @ ps[i] + ps[i + 1]
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


class Skip(Exception):
    """A contender that cannot run here; reported as skipped with the reason."""


def contenders(backends: list[str], peers: list[str], device: str) -> dict[str, tuple[str, Any]]:
    """impl name -> (backend label, factory) for what was asked and can run on ``device``."""
    out: dict[str, tuple[str, Any]] = {}
    for b in backends:
        if (b == "cupy") == (device == "gpu"):
            out[f"gpunn-{b}"] = (b, gpunn_run(b))
    if device == "gpu" and "cupy" in backends:
        out["gpunn-cupy-separate"] = ("cupy", gpunn_run("cupy", epilogues="never"))
        out["gpunn-cupy-one-kernel"] = ("cupy", gpunn_run("cupy", small_net=True))
    if device == "cpu" and "numpy-book" in peers:
        out["numpy-book"] = ("numpy", numpy_book_run)
    if "pytorch" in peers:
        out["pytorch"] = ("torch", torch_run(graph=False))
        if device == "gpu":  # PyTorch's best: the whole step in a CUDA graph
            out["pytorch-graph"] = ("torch", torch_run(graph=True))
    if "jax" in peers:
        out["jax"] = ("jax", jax_run)
    return out


# ---- measuring ---------------------------------------------------------------------------------

def time_steps(run: Run, seconds: float, min_steps: int = 3) -> float:
    """Mean ms per step over as many steps as fit in ``seconds`` (at least ``min_steps``)."""
    run.step()
    run.sync()
    t0 = time.perf_counter()
    k = 0
    while True:
        run.step()
        k += 1
        if k >= min_steps and k % 4 == 0:
            run.sync()
            elapsed = time.perf_counter() - t0
            if elapsed > seconds:
                return elapsed / k * 1e3


def gemm_ceiling(device: str, precision: str, seconds: float) -> float:
    """TFLOP/s of a large float32 GEMM on this device (2048^3 on the CPU, 8192^3 on a GPU)."""
    if device == "cpu":
        a = np.random.default_rng(1).standard_normal((2048, 2048)).astype(np.float32)
        out = np.empty_like(a)
        run = Run(lambda: np.matmul(a, a, out=out), lambda: None, lambda: 0.0)
        return 2 * 2048**3 / (time_steps(run, seconds) / 1e3) / 1e12
    import cupy as cp

    from .backends import get_backend

    bk = get_backend("cupy")
    bk.set_precision(precision)
    a = cp.random.standard_normal((8192, 8192), dtype=cp.float32)
    out = cp.empty_like(a)
    try:
        ms = time_steps(Run(lambda: bk.gemm(a, a, out), bk.synchronize, lambda: 0.0), seconds)
    finally:
        bk.set_precision("fp32")
    return 2 * 8192**3 / (ms / 1e3) / 1e12


def machine_info(device_names: dict[str, str], ceilings: dict[str, float]) -> dict[str, Any]:
    from .backends import get_backend

    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # a bare GPU image; gpunn's own install always has it
        def threadpool_info() -> list[dict[str, Any]]:
            return [{"internal_api": "unknown (threadpoolctl not installed)"}]

    versions = {"gpunn": __import__("gpunn").__version__, "numpy": np.__version__}
    for name in ("cupy", "torch", "jax"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            pass
    blas = [{k: info.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer")}
            for info in threadpool_info()]
    return {"cpu": get_backend("numpy").device_name(), "cpu_cores": os.cpu_count() or 1,
            "gpu": device_names.get("gpu"), "python": platform.python_version(),
            "versions": versions, "blas": blas, "gemm_ceiling": ceilings}


def book_run(impl: str, device: str) -> float:
    """Seconds for the book's whole run (10,001 full-batch epochs, Adam lr 0.05 decay 5e-7)."""
    from . import datasets

    X, y = datasets.spiral_data(samples=100, classes=3, seed=0)
    if impl.startswith("gpunn-"):
        from . import Adam, Dense, ReLU, Sequential, SoftmaxCrossEntropy, set_seed

        backend = "cupy" if impl.startswith("gpunn-cupy") else "numpy"

        def train(epochs: int) -> float:
            set_seed(0)
            model = Sequential([Dense(2, 64), ReLU(), Dense(64, 3)])
            model.compile(SoftmaxCrossEntropy(), Adam(lr=0.05, decay=5e-7), backend=backend)
            if backend == "cupy":  # gpunn-cupy-one-kernel: the one-block trainer, switched on
                model.backend.small_net_kernel = impl == "gpunn-cupy-one-kernel"
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


# ---- the suite ---------------------------------------------------------------------------------

def run_suite(workloads: list[str], backends: list[str], peers: list[str], precisions: list[str],
              repeats: int, seconds: float, check_steps: int = 3,
              log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Measure every contender on every workload, interleaved; returns the JSON document."""
    from .backends import available, get_backend

    devices = (["cpu"] if "numpy" in backends else []) \
        + (["gpu"] if "cupy" in backends and "cupy" in available() else [])
    unknown = set(backends) - {"numpy", "cupy"}
    if unknown:
        raise ValueError(f"--backends: unknown backend {sorted(unknown)[0]!r}; choose from numpy, cupy")
    skipped: list[dict[str, str]] = []
    if "cupy" in backends and "gpu" not in devices:
        from .backends import _cupy_problem

        skipped.append({"impl": "gpunn-cupy", "workload": "*", "reason": str(_cupy_problem())})
    device_names = {"cpu": get_backend("numpy").device_name()}
    if "gpu" in devices:
        device_names["gpu"] = get_backend("cupy").device_name()
    ceilings: dict[str, float] = {}
    results: list[dict[str, Any]] = []
    for name in workloads:
        if name == "book":
            for device in devices:
                book_rows = []
                impls = [impl for impl in contenders(backends, peers, device)
                         if impl not in ("numpy-book", "gpunn-cupy-separate")]  # per step only
                for impl in impls:
                    try:
                        seconds_taken = book_run(impl, device)
                    except Skip as why:
                        skipped.append({"impl": impl, "workload": name, "reason": str(why)})
                        continue
                    except ImportError as exc:
                        skipped.append({"impl": impl, "workload": name, "reason": f"not importable: {exc}"})
                        continue
                    book_rows.append({
                        "workload": name, "impl": impl,
                        "backend": impl.split("-")[1] if impl.startswith("gpunn-")
                        else _peer_backend(impl),
                        "precision": "fp32", "device": device, "step_ms": seconds_taken * 1e3,
                        "step_ms_spread": 0.0, "samples_per_s": BOOK_EPOCHS * 300 / seconds_taken,
                        "tflops": None, "ceiling_fraction": None, "final_loss": None})
                _add_speedups(book_rows)
                for row in book_rows:
                    log(f"book    {device} {row['impl']:19s} {row['step_ms'] / 1e3:8.3f} s for "
                        f"{BOOK_EPOCHS} epochs" + _speedup_text(row))
                results += book_rows
            continue
        w = WORKLOADS[name]
        X, y = workload_data(w)
        params = initial_params(w.sizes)
        for device in devices:
            if w.gpu_only and device == "cpu":
                skipped.append({"impl": "*", "workload": name, "reason": "large runs only on a GPU"})
                continue
            for precision in precisions:
                if precision == "tf32" and device == "cpu":
                    continue
                runs: dict[str, tuple[str, Run]] = {}
                for impl, (backend, make) in contenders(backends, peers, device).items():
                    try:
                        run = make(w, params, X, y, precision, device)
                        for _ in range(check_steps):  # the same steps for everyone, then the loss
                            run.step()
                        run.sync()
                        runs[impl] = (backend, run, run.loss())
                    except Skip as why:
                        skipped.append({"impl": impl, "workload": name, "reason": str(why)})
                    except ImportError as exc:
                        skipped.append({"impl": impl, "workload": name, "reason": f"not importable: {exc}"})
                key = f"{device}-{precision}"
                times: dict[str, list[float]] = {impl: [] for impl in runs}
                ceiling_samples = []
                for _ in range(repeats):
                    ceiling_samples.append(gemm_ceiling(device, precision, seconds / 2))
                    for impl, (_, run, _) in runs.items():
                        times[impl].append(time_steps(run, seconds))
                ceilings[key] = statistics.median(ceiling_samples) if ceiling_samples else 0.0
                rows = []
                for impl, (backend, _, final_loss) in runs.items():
                    ms = statistics.median(times[impl])
                    tflops = w.flops / (ms / 1e3) / 1e12
                    rows.append({"workload": name, "impl": impl, "backend": backend,
                                 "precision": precision, "device": device, "step_ms": ms,
                                 "step_ms_spread": max(times[impl]) - min(times[impl]),
                                 "samples_per_s": w.batch / (ms / 1e3), "tflops": tflops,
                                 "ceiling_fraction": tflops / ceilings[key] if ceilings[key] else None,
                                 "final_loss": final_loss})
                _add_speedups(rows)
                for row in rows:
                    log(_row_text(row))
                results += rows
    machine = machine_info(device_names, ceilings)
    return {"machine": machine, "results": results, "skipped": skipped}


def _peer_backend(impl: str) -> str:
    return {"pytorch": "torch", "pytorch-graph": "torch", "jax": "jax"}.get(impl, "numpy")


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """On gpunn rows: each peer's time over gpunn's (above 1: gpunn is faster)."""
    for row in rows:
        if row["impl"].startswith("gpunn-"):
            row["speedup_vs"] = {o["impl"]: o["step_ms"] / row["step_ms"] for o in rows
                                 if not o["impl"].startswith("gpunn-")}


def _speedup_text(row: dict[str, Any]) -> str:
    if not row.get("speedup_vs"):
        return ""
    return "  " + ", ".join(f"{v:.2f}x {k}" for k, v in row["speedup_vs"].items())


def _row_text(row: dict[str, Any]) -> str:
    text = (f"{row['workload']:7s} {row['device']} {row['precision']} {row['impl']:19s} "
            f"{row['step_ms']:10.4f} ms ±{row['step_ms_spread']:.4f}  "
            f"{row['samples_per_s']:12.0f} samples/s")
    if row.get("ceiling_fraction"):
        text += f"  {100 * row['ceiling_fraction']:5.1f}% of GEMM ceiling"
    return text + _speedup_text(row)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ""
    lines = [f"Machine: {m['cpu']} ({m['cpu_cores']} cores){gpu}"
             + f"; versions {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.", "",
             "GEMM ceiling (TFLOP/s): " + ", ".join(f"{k} {v:.3f}" for k, v in m["gemm_ceiling"].items()),
             "", "| workload | device | precision | impl | step (ms) | samples/s | % of GEMM ceiling "
                 "| gpunn speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        frac = f"{100 * r['ceiling_fraction']:.1f}" if r.get("ceiling_fraction") else ""
        speed = ", ".join(f"{v:.2f}x vs {k}" for k, v in r.get("speedup_vs", {}).items())
        lines.append(f"| {r['workload']} | {r['device']} | {r['precision']} | {r['impl']} | "
                     f"{r['step_ms']:.4f} | {r['samples_per_s']:.0f} | {frac} | {speed} |")
    for s in doc["skipped"]:
        lines.append(f"\nSkipped: {s['impl']} ({s.get('workload', '')}): {s['reason']}")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: str) -> None:
    """A bar chart of samples/s per workload and contender, log scale."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError('--plot needs matplotlib: pip install "gpunn[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["workload"], r["device"], r["precision"]) for r in doc["results"]},
                    key=lambda g: (list(WORKLOADS) + ["book"]).index(g[0]))
    impls = sorted({r["impl"] for r in doc["results"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, g in enumerate(groups):
            row = next((r for r in doc["results"] if (r["workload"], r["device"], r["precision"]) == g
                        and r["impl"] == impl), None)
            if row:
                xs.append(i + j * width)
                ys.append(row["samples_per_s"])
        ax.bar(xs, ys, width, label=impl)
    ax.set_yscale("log")
    ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{w}\n{d} {p}" for w, d, p in groups])
    ax.set_ylabel("samples / s (log scale)")
    ax.set_title("gpunn bench: training throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _importable(name: str) -> bool:
    try:
        return sys.modules.get(name, True) is not None and importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def main(args: Any) -> int:
    """The ``gpunn bench`` command (arguments parsed by gpunn.cli)."""
    from .backends import available

    backends = args.backends.split(",") if args.backends else available()
    peers = args.peers.split(",") if args.peers else ["pytorch", "jax", "numpy-book"]
    workloads = args.workloads.split(",")
    for w in workloads:
        if w not in WORKLOADS and w != "book":
            raise ValueError(f"--workloads: unknown workload {w!r}; choose from "
                             f"{', '.join(list(WORKLOADS) + ['book'])}")
    repeats = args.repeats or (3 if args.quick else 7)
    seconds = 0.25 if args.quick else 0.6
    limits = None
    if args.threads:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads)
    torch_threads = None
    if args.threads and "torch" in sys.modules or (args.threads and _importable("torch")):
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
    try:
        doc = run_suite(workloads, backends, peers, args.precision.split(","), repeats, seconds)
    finally:
        if limits is not None:
            limits.restore_original_limits()
        if torch_threads is not None:
            sys.modules["torch"].set_num_threads(torch_threads)
    for s in doc["skipped"]:
        print(f"skipped: {s['impl']} ({s.get('workload', '')}): {s['reason']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(doc))
    if args.plot:
        plot(doc, args.plot)
    return 0
