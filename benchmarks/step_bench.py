"""One training step (forward, softmax cross-entropy, backward, SGD update), gpunn's NumPy backend
against PyTorch CPU (when importable) and a straightforward NumPy port of the book's code, with
the float32 GEMM ceiling measured in the same run. Contenders are interleaved, repeat by repeat,
so drift on a shared machine hits them alike.

    python benchmarks/step_bench.py [--workloads small,medium] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import gpunn as nn

WORKLOADS = {  # name: (layer sizes, batch) as in shared PERF.md
    "small": ((2, 64, 3), 300),
    "medium": ((784, 1024, 1024, 10), 1024),
}


def flops_per_step(sizes: tuple[int, ...], batch: int) -> float:
    """6 B sum(in * out) less the first layer's input gradient (2 B in out), which is not needed."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return 6 * batch * sum(i * o for i, o in pairs) - 2 * batch * pairs[0][0] * pairs[0][1]


def make_data(sizes: tuple[int, ...], batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    return X, y


def gpunn_step(sizes, X, y, lr=0.01):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Dense(a, b, seed=i))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(layers).compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=lr), backend="numpy")
    Xd, yd = model._prepare(X, y)
    return lambda: model._step(Xd, yd)


def book_step(sizes, X, y, lr=0.01):
    """The book's code as a reader would port it: np.dot, new arrays every step."""
    rng = np.random.default_rng(0)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params.append([(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32),
                       np.zeros((1, b), np.float32)])
    n = len(y)

    def step():
        acts = [X]
        for i, (W, b) in enumerate(params):
            z = np.dot(acts[-1], W) + b
            acts.append(np.maximum(0, z) if i < len(params) - 1 else z)
        z = acts[-1]
        e = np.exp(z - np.max(z, axis=1, keepdims=True))
        p = e / np.sum(e, axis=1, keepdims=True)
        loss = np.mean(-np.log(np.clip(p[range(n), y], 1e-7, 1 - 1e-7)))
        d = p.copy()
        d[range(n), y] -= 1
        d = d / n
        for i in range(len(params) - 1, -1, -1):
            W, b = params[i]
            dW, db = np.dot(acts[i].T, d), np.sum(d, axis=0, keepdims=True)
            if i > 0:
                d = np.dot(d, W.T)
                d[acts[i] <= 0] = 0
            params[i][0] = W - lr * dW
            params[i][1] = b - lr * db
        return loss

    return step


def torch_step(sizes, X, y, lr=0.01):
    import torch

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(Xt), yt)
        loss.backward()
        opt.step()
        return loss

    return step


def gemm_ceiling(seconds: float) -> float:
    """float32 GEMM GFLOP/s on 2048^3 (the machine's best matrix-product rate)."""
    a = np.random.default_rng(1).standard_normal((2048, 2048)).astype(np.float32)
    out = np.empty_like(a)
    ms = time_steps(lambda: np.matmul(a, a, out=out), seconds)
    return 2 * 2048**3 / (ms / 1e3) / 1e9


def time_steps(step, seconds: float) -> float:
    """Median-friendly sample: the mean time of as many steps as fit in ``seconds`` (ms)."""
    step()
    t0 = time.perf_counter()
    k = 0
    while True:
        step()
        k += 1
        elapsed = time.perf_counter() - t0
        if elapsed > seconds:
            return elapsed / k * 1e3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="small,medium")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.5, help="time per contender per repeat")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    contenders = {"gpunn-numpy": gpunn_step, "book-numpy": book_step}
    try:
        import torch

        torch.set_num_threads(2)
        contenders["pytorch-cpu"] = torch_step
    except ImportError:
        print("pytorch: not importable, skipped")

    results = []
    ceilings = []
    for name in args.workloads.split(","):
        sizes, batch = WORKLOADS[name]
        X, y = make_data(sizes, batch)
        steps = {impl: make(sizes, X, y) for impl, make in contenders.items()}
        times: dict[str, list[float]] = {impl: [] for impl in steps}
        for _ in range(args.repeats):
            ceilings.append(gemm_ceiling(args.seconds))  # measured between contenders too:
            for impl, step in steps.items():  # interleaved, so drift hits all alike
                times[impl].append(time_steps(step, args.seconds))
        ceiling = statistics.median(ceilings[-args.repeats:])
        print(f"float32 GEMM ceiling (2048^3, median of repeats): {ceiling:.0f} GFLOP/s")
        flops = flops_per_step(sizes, batch)
        for impl, ts in times.items():
            ms = statistics.median(ts)
            results.append({"workload": name, "impl": impl, "step_ms": ms,
                            "spread_ms": max(ts) - min(ts),
                            "ceiling_fraction": flops / (ms / 1e3) / 1e9 / ceiling})
        base = statistics.median(times["gpunn-numpy"])
        for r in results[-len(times):]:
            r["gpunn_speedup"] = r["step_ms"] / base
            print(f"{name:7s} {r['impl']:12s} {r['step_ms']:9.4f} ms  ±{r['spread_ms']:.4f}  "
                  f"{100 * r['ceiling_fraction']:5.1f}% of GEMM ceiling  "
                  f"gpunn is {r['gpunn_speedup']:.2f}x faster")
    out = {"gemm_ceiling_gflops": statistics.median(ceilings), "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
