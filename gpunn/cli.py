"""The command line: ``gpunn train`` (the book's spiral classifier by default) and ``gpunn info``."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpunn", description="Train the dense networks of 'Neural "
                                 "Networks from Scratch' on NumPy (CPU) or CuPy (GPU).")
    sub = ap.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a classifier on a toy data set (the book's run by default)")
    train.add_argument("--backend", default=None, choices=("auto", "numpy", "cupy"),
                       help="default: $GPUNN_BACKEND or auto")
    train.add_argument("--dataset", default="spiral", choices=("spiral", "vertical"))
    train.add_argument("--samples", type=_positive_int, default=100, help="samples per class")
    train.add_argument("--classes", type=_positive_int, default=3)
    train.add_argument("--hidden", type=_positive_int, default=64, help="neurons in the hidden layer")
    train.add_argument("--epochs", type=int, default=10_001)
    train.add_argument("--batch-size", type=_positive_int, default=None, help="default: full batch")
    train.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: the book's 0.05 for adam, 1.0 for sgd, ...)")
    train.add_argument("--decay", type=float, default=5e-7)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("info", help="backends, device and library versions")
    bench = sub.add_parser("bench", help="training-step throughput against PyTorch and JAX")
    bench.add_argument("--workloads", default="small,medium,large,book",
                       help="comma-separated: small, medium, large (GPU only), book")
    bench.add_argument("--backends", default=None, help="numpy,cupy (default: all available)")
    bench.add_argument("--peers", default=None, help="pytorch,jax,numpy-book (default: all; "
                       "those not importable are reported as skipped)")
    bench.add_argument("--precision", default="fp32,tf32", help="fp32,tf32 (tf32 on GPUs only)")
    bench.add_argument("--repeats", type=_positive_int, default=None, help="default 7, 3 with --quick")
    bench.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="BLAS (and PyTorch) threads; default: as found")
    bench.add_argument("--json", default=None, help="write the results here (schema: gpunn.bench.SCHEMA)")
    bench.add_argument("--markdown", default=None, help="write a Markdown table here")
    bench.add_argument("--plot", default=None, help="write a PNG bar chart here (needs gpunn[plot])")
    return ap


def _optimizer(name: str, lr: float | None, decay: float):
    import gpunn as nn

    defaults = {"adam": 0.05, "sgd": 1.0, "adagrad": 1.0, "rmsprop": 0.02}
    cls = {"adam": nn.Adam, "sgd": nn.SGD, "adagrad": nn.Adagrad, "rmsprop": nn.RMSprop}[name]
    return cls(lr=defaults[name] if lr is None else lr, decay=decay)


def train(args: argparse.Namespace) -> int:
    import gpunn as nn

    make = nn.datasets.spiral_data if args.dataset == "spiral" else nn.datasets.vertical_data
    X, y = make(samples=args.samples, classes=args.classes, seed=args.seed)
    nn.set_seed(args.seed)
    model = nn.Sequential([nn.Dense(2, args.hidden), nn.ReLU(), nn.Dense(args.hidden, args.classes)])
    model.compile(loss=nn.SoftmaxCrossEntropy(), optimizer=_optimizer(args.optimizer, args.lr, args.decay),
                  backend=args.backend)
    start = time.perf_counter()
    model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
              verbose=0 if args.quiet else 1)
    model.backend.synchronize()
    seconds = time.perf_counter() - start
    result = model.evaluate(X, y)
    print(f"accuracy {result['accuracy']:.3f} loss {result['loss']:.3f} "
          f"({model.backend.name}, {seconds:.1f} s)")
    return 0


def info() -> int:
    import gpunn as nn
    from gpunn.backends import _cupy_problem

    print(f"gpunn {nn.__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(f"backends available: {', '.join(nn.backends.available())}")
    cores = os.cpu_count()
    print(f"numpy {np.__version__}; BLAS: {_blas_name()} ({_blas_threads()} threads); CPU: "
          f"{nn.backends.get_backend('numpy').device_name()} ({cores} cores)")
    problem = _cupy_problem()
    if problem:
        print(f"cupy: unavailable ({problem})")
    else:
        import cupy

        bk = nn.backends.get_backend("cupy")
        runtime = cupy.cuda.runtime.runtimeGetVersion()
        print(f"cupy {cupy.__version__}; CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}; "
              f"device: {bk.device_name()}")
    return 0


def _blas_threads() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(str(i["num_threads"]) for i in threadpool_info()) or "?"


def _blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy without mode="dicts"
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "bench":
            from . import bench

            return bench.main(args)
        return info()
    except (ValueError, TypeError, RuntimeError, FloatingPointError, ImportError) as exc:
        print(f"gpunn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
