"""GPU benchmark for a lent device (run by `make gpu-check`): one training step (forward, softmax
cross-entropy, backward, SGD) of gpunn's CuPy backend against PyTorch eager, PyTorch with the
whole step in a CUDA graph, and JAX jit, fp32 and tf32, on the workloads of shared PERF.md; the
book's 10,001-epoch run (Adam) end to end; and the GEMM ceilings, all in one process. Each
contender that fails is reported as failed and the rest go on.

    python benchmarks/gpu_bench.py [--workloads small,medium,large] [--json OUT/gpu_bench.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import traceback

import numpy as np

WORKLOADS = {"small": ((2, 64, 3), 300), "medium": ((784, 1024, 1024, 10), 1024),
             "large": ((4096, 4096, 4096, 4096, 1000), 8192)}
LR = 0.01


def flops_per_step(sizes, batch):
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return 6 * batch * sum(i * o for i, o in pairs) - 2 * batch * pairs[0][0] * pairs[0][1]


def data(sizes, batch):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], batch)


def timed(step, sync, steps: int, repeats: int = 5) -> tuple[float, float]:
    """Median and spread (ms per step) of ``repeats`` runs of ``steps`` steps between syncs."""
    for _ in range(3):
        step()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return statistics.median(times), max(times) - min(times)


# ---- contenders: each returns (step, sync) --------------------------------------------------

def gpunn_step(sizes, X, y, precision):
    import gpunn as nn

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Dense(a, b, init="he", seed=i))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(layers)
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=LR), backend="cupy", precision=precision)
    Xd, yd = model._prepare(X, y)
    model._sync_schedule()
    plan = model._plan(len(X), 1)
    plan.x[...] = Xd
    plan.y[...] = yd
    return plan.run, model.backend.synchronize  # the plan keeps the model alive


def torch_model(sizes):
    import torch

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).cuda()


def torch_eager(sizes, X, y, precision):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    model = torch_model(sizes)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    Xt, yt = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(Xt), yt).backward()
        opt.step()

    return step, torch.cuda.synchronize


def torch_graph(sizes, X, y, precision):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    model = torch_model(sizes)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    Xt, yt = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    loss_fn = torch.nn.CrossEntropyLoss()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(Xt), yt).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss_fn(model(Xt), yt).backward()
        opt.step()
    return graph.replay, torch.cuda.synchronize


def jax_jit(sizes, X, y, precision):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if precision == "tf32" else "float32")
    rng = np.random.default_rng(0)
    params = [(jnp.asarray((rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)),
               jnp.zeros((b,), jnp.float32)) for a, b in zip(sizes[:-1], sizes[1:])]
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss(params, x, labels):
        for i, (W, b) in enumerate(params):
            x = x @ W + b
            if i < len(params) - 1:
                x = jax.nn.relu(x)
        logp = jax.nn.log_softmax(x)
        return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()

    @jax.jit
    def step(params):
        grads = jax.grad(loss)(params, Xj, yj)
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads)

    state = {"params": params}

    def run():
        state["params"] = step(state["params"])

    return run, lambda: jax.block_until_ready(state["params"])


CONTENDERS = {"gpunn": gpunn_step, "pytorch-eager": torch_eager, "pytorch-graph": torch_graph,
              "jax-jit": jax_jit}


# ---- the book's run --------------------------------------------------------------------------

def book_gpunn():
    import gpunn as nn

    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)

    def run(epochs):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05, decay=5e-7), backend="cupy")
        t0 = time.perf_counter()
        model.fit(X, y, epochs=epochs, batch_size=None, verbose=0)
        model.backend.synchronize()
        return time.perf_counter() - t0, model.evaluate(X, y)["accuracy"]

    run(200)  # warm-up: kernels compile, graphs of this shape are recorded once per model
    return run(10_001)


def book_torch(graph: bool):
    import torch

    import gpunn as nn

    torch.backends.cuda.matmul.allow_tf32 = False
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    Xt, yt = torch.tensor(X, dtype=torch.float32).cuda(), torch.tensor(y, dtype=torch.int64).cuda()
    model = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)).cuda()
    lr = torch.tensor(0.05, device="cuda") if graph else 0.05
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
            for _ in range(3):
                body()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            body()
        for t in range(10_001):
            lr.fill_(0.05 / (1 + 5e-7 * t))
            g.replay()
    else:
        for t in range(10_001):
            for group in opt.param_groups:
                group["lr"] = 0.05 / (1 + 5e-7 * t)
            body()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, None


def book_jax_scan():
    import jax
    import jax.numpy as jnp

    import gpunn as nn

    jax.config.update("jax_default_matmul_precision", "float32")
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
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
        (p, _, _), _ = jax.lax.scan(epoch, (p, zeros, zeros), jnp.arange(10_001, dtype=jnp.float32))
        return p

    jax.block_until_ready(train(params))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(train(params))
    return time.perf_counter() - t0, None


BOOK = {"gpunn": book_gpunn, "pytorch-eager": lambda: book_torch(False),
        "pytorch-graph": lambda: book_torch(True), "jax-scan": book_jax_scan}


def gemm_ceiling(precision: str) -> float:
    """TFLOP/s of an 8192^3 float32 GEMM through CuPy (cuBLAS), TF32 or not."""
    import cupy as cp

    from gpunn.backends import get_backend

    bk = get_backend("cupy")
    bk.set_precision(precision)
    a = cp.random.standard_normal((8192, 8192), dtype=cp.float32)
    out = cp.empty_like(a)
    ms, _ = timed(lambda: bk.gemm(a, a, out), bk.synchronize, steps=10, repeats=3)
    bk.set_precision("fp32")
    return 2 * 8192**3 / (ms / 1e3) / 1e12


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="small,medium,large")
    ap.add_argument("--precisions", default="fp32,tf32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from gpunn.backends import _cupy_problem, get_backend

    if _cupy_problem():
        print(f"gpu_bench: no CUDA device here ({_cupy_problem()}); nothing to measure")
        return
    import cupy

    bk = get_backend("cupy")
    machine = {"gpu": bk.device_name(), "cupy": cupy.__version__, "python": platform.python_version(),
               "cublas_via": "nvmath" if bk.blas.capturable else f"cupy ({bk.blas.why_not})"}
    for name in ("torch", "jax"):
        try:
            machine[name] = __import__(name).__version__
        except Exception as exc:
            machine[name] = f"unavailable: {exc}"
    ceilings = {}
    for p in args.precisions.split(","):
        try:
            ceilings[p] = gemm_ceiling(p)
        except Exception as exc:
            ceilings[p] = None
            print(f"GEMM ceiling {p}: failed ({exc})")
    print(f"{machine}\nGEMM ceilings (TFLOP/s): {ceilings}")
    results = []
    for workload in args.workloads.split(","):
        sizes, batch = WORKLOADS[workload]
        X, y = data(sizes, batch)
        steps = {"small": 2000, "medium": 200, "large": 10}[workload]
        for precision in args.precisions.split(","):
            for impl, make in CONTENDERS.items():
                row = {"workload": workload, "impl": impl, "precision": precision}
                try:
                    step, sync = make(sizes, X, y, precision)
                    row["step_ms"], row["spread_ms"] = timed(step, sync, steps)
                    tflops = flops_per_step(sizes, batch) / (row["step_ms"] / 1e3) / 1e12
                    row["tflops"] = tflops
                    if ceilings.get(precision):
                        row["ceiling_fraction"] = tflops / ceilings[precision]
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                results.append(row)
                shown = f"{row['step_ms']:.4f} ms" if "step_ms" in row else row["error"][:80]
                print(f"{workload:7s} {precision} {impl:14s} {shown}", flush=True)
    book = []
    for impl, run in BOOK.items():
        row = {"workload": "book-10001-epochs", "impl": impl}
        try:
            row["seconds"], row["accuracy"] = run()
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        book.append(row)
        print(f"book run {impl:14s} {row.get('seconds', row.get('error'))}", flush=True)

    print("\n| workload | precision | " + " | ".join(CONTENDERS) + " |")
    print("|---|---|" + "---|" * len(CONTENDERS))
    for workload in args.workloads.split(","):
        for precision in args.precisions.split(","):
            cells = []
            for impl in CONTENDERS:
                row = next(r for r in results if r["workload"] == workload and r["impl"] == impl
                           and r["precision"] == precision)
                cells.append(f"{row['step_ms']:.4f}" if "step_ms" in row else "failed")
            print(f"| {workload} | {precision} | " + " | ".join(cells) + " |")
    print("\nbook run, 10,001 epochs (s): " + ", ".join(
        f"{r['impl']} {r['seconds']:.3f}" if "seconds" in r else f"{r['impl']} failed" for r in book))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "gemm_ceiling_tflops": ceilings, "results": results,
                       "book_run": book}, f, indent=2)


if __name__ == "__main__":
    main()
