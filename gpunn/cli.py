"""The command line: ``gpunn train`` (the book's spiral classifier by default), ``gpunn predict``,
``gpunn bench`` and ``gpunn info``.

A bad option, bad data or a failure ends with one line on stderr naming it and exit status 2
(Ctrl-C: one line and 130); ``--debug`` or ``GPUNN_DEBUG=1`` shows the traceback instead. Every
output path is checked before any work is done for it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time
import warnings
from io import BytesIO
from typing import NoReturn

import numpy as np

from . import __version__

OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop")


class Parser(argparse.ArgumentParser):
    """argparse, its errors on one line: ``gpunn train: error: argument --epochs: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _whole(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}; got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1)


def _count(text: str) -> int:
    return _whole(text, 0)


def _number(text: str, low_open: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (low_open and value == 0):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>' if low_open else '>='} 0; "
                                         f"got {text}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, low_open=True)


def _non_negative_float(text: str) -> float:
    return _number(text, low_open=False)


#: The widest hidden layer ``--hidden`` takes (a wider one is most likely a typo).
MAX_WIDTH = 1 << 20


def _widths(text: str) -> list[int]:
    """Hidden layer sizes: ``64`` or ``256,128``."""
    widths = [_whole(part.strip(), 1) for part in text.split(",")]
    too_wide = [w for w in widths if w > MAX_WIDTH]
    if too_wide:
        raise argparse.ArgumentTypeError(f"layers wider than {MAX_WIDTH} units are refused; "
                                         f"got {too_wide[0]}")
    return widths


def _log_to_stderr() -> None:
    """What gpunn logs (the backend "auto" chose, a fast path that fell back), one line each on
    stderr; the library itself only adds a NullHandler."""
    log = logging.getLogger("gpunn")
    if not any(getattr(h, "gpunn_cli", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.gpunn_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _parser() -> argparse.ArgumentParser:
    ap = Parser(prog="gpunn", description="Train the dense networks of 'Neural Networks from "
                "Scratch' on NumPy (CPU) or CuPy (GPU).")
    ap.add_argument("--debug", action="store_true",
                    help="show the traceback of an error (also GPUNN_DEBUG=1)")
    ap.add_argument("--version", action="version", version=f"gpunn {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser("train", help="train a classifier (the book's spiral run by default)")
    train.add_argument("--backend", default=None, choices=("auto", "numpy", "cupy"),
                       help="default: $GPUNN_BACKEND or auto")
    train.add_argument("--dataset", default="spiral",
                       help="spiral, vertical, digits (needs gpunn[data]) or a .npz file with X and y")
    train.add_argument("--samples", type=_positive_int, default=100, help="samples per class (toy sets)")
    train.add_argument("--classes", type=_positive_int, default=3, help="classes (toy sets)")
    train.add_argument("--hidden", type=_widths, default=None,
                       help="hidden layer sizes, e.g. 64 or 256,128 "
                            "(default: 64 for toy sets, 256,128 otherwise)")
    train.add_argument("--epochs", type=_count, default=None,
                       help="default: 10001 for toy sets, 50 otherwise")
    train.add_argument("--batch-size", type=_positive_int, default=None,
                       help="default: full batch for toy sets, 32 otherwise")
    train.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default: the book's 0.05 for adam on toy sets, ...)")
    train.add_argument("--decay", type=_non_negative_float, default=None,
                       help="default: 5e-7 toy sets, 1e-4 otherwise")
    train.add_argument("--seed", type=_count, default=0)
    train.add_argument("--save", default=None, help="save the trained model to this .safetensors file")
    train.add_argument("--plot", default=None, help="draw loss and accuracy curves to this PNG")
    train.add_argument("--checkpoint", default=None, help="checkpoint file (saved at the end and on Ctrl-C)")
    train.add_argument("--checkpoint-every", type=_positive_int, default=None, help="also every k epochs")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--nproc", type=_positive_int, default=1,
                       help="train on this many processes (MPI ranks, one GPU each where there "
                            "are GPUs): gpunn re-launches itself under mpiexec (needs gpunn[mpi])")
    predict = sub.add_parser("predict", help="predict with a saved model")
    predict.add_argument("model", help="a .safetensors file saved by gpunn")
    predict.add_argument("data", help="a .npz file with X (y too, to report accuracy)")
    predict.add_argument("--output", default=None,
                         help="write predictions here (.npz: predictions and outputs; .csv: one row "
                              "per sample); default: print one predicted class per line")
    predict.add_argument("--backend", default=None, choices=("auto", "numpy", "cupy"))
    sub.add_parser("info", help="backends, device and library versions")
    bench = sub.add_parser("bench", help="training-step throughput against PyTorch and JAX")
    bench.add_argument("--workloads", default="small,medium,large,book",
                       help="comma-separated: small, medium, large (GPU only), book")
    bench.add_argument("--backends", default=None, help="numpy,cupy (default: all available)")
    bench.add_argument("--peers", default=None, help="pytorch,jax,numpy-book (default: all; "
                       "those not importable are reported as skipped)")
    bench.add_argument("--precision", default="fp32,tf32,bf16",
                       help="fp32,tf32,bf16 (tf32 and bf16 on GPUs only)")
    bench.add_argument("--repeats", type=_positive_int, default=None, help="default 7, 3 with --quick")
    bench.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    bench.add_argument("--nproc", type=_positive_int, default=1,
                       help="also time fit(distributed=True) on 1 and on this many MPI ranks "
                            "(needs gpunn[mpi])")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="BLAS (and PyTorch) threads; default: as found")
    bench.add_argument("--ops", action="store_true",
                       help="also time each backend op of gpunn's step: where a step's time goes")
    bench.add_argument("--json", default=None, help="write the results here (schema: gpunn.bench.SCHEMA)")
    bench.add_argument("--markdown", default=None, help="write a Markdown table here")
    bench.add_argument("--plot", default=None, help="write a PNG bar chart here (needs gpunn[plot])")
    return ap


TOY = ("spiral", "vertical")


def _optimizer(name: str, lr: float | None, decay: float, toy: bool):
    import gpunn as nn

    if toy:  # the book's settings
        defaults = {"adam": 0.05, "sgd": 1.0, "adagrad": 1.0, "rmsprop": 0.02}
    else:
        defaults = {"adam": 0.005, "sgd": 0.1, "adagrad": 0.1, "rmsprop": 0.002}
    cls = {"adam": nn.Adam, "sgd": nn.SGD, "adagrad": nn.Adagrad, "rmsprop": nn.RMSprop}[name]
    return cls(lr=defaults[name] if lr is None else lr, decay=decay)


def _dataset(args: argparse.Namespace):
    """(X_train, y_train, X_test, y_test); toy sets are evaluated on their training data."""
    import gpunn as nn

    if args.dataset in TOY:
        make = nn.datasets.spiral_data if args.dataset == "spiral" else nn.datasets.vertical_data
        X, y = make(samples=args.samples, classes=args.classes, seed=args.seed)
        return X, y, X, y
    if args.dataset == "digits":
        X, y = nn.datasets.load_digits()
    elif args.dataset.endswith(".npz"):
        X, y = nn.datasets.load_npz(args.dataset)
    else:
        raise ValueError(f"--dataset must be spiral, vertical, digits or a .npz file; got "
                         f"{args.dataset!r}")
    X_train, X_test, y_train, y_test = nn.datasets.train_test_split(X, y, test_size=0.2,
                                                                    seed=args.seed, stratify=True)
    return X_train, y_train, X_test, y_test


def _outputs(args: argparse.Namespace) -> None:
    """Every file ``gpunn train`` will write, checked before training starts."""
    from . import files

    for option, path in (("--save", args.save), ("--plot", args.plot),
                         ("--checkpoint", args.checkpoint)):
        if path is not None:
            files.check_writable(path, option)
    if args.plot is not None:
        from .plot import require_matplotlib

        require_matplotlib()  # matplotlib is there, or say so now, not after training
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint <file> to resume from")


#: Set in the processes ``relaunch`` starts: each is a rank of a distributed run.
RANKED = "GPUNN_RANKED"


def relaunch(argv: list[str], nproc: int) -> int:
    """``gpunn train ... --nproc N``: the same command on N MPI ranks (``python -m mpi4py``, so a
    rank that fails ends them all), its exit status."""
    import subprocess

    from .distributed import mpiexec

    rest = [a for i, a in enumerate(argv) if a != "--nproc" and not a.startswith("--nproc=")
            and (i == 0 or argv[i - 1] != "--nproc")]
    cmd = [mpiexec(), "-n", str(nproc), sys.executable, "-m", "mpi4py", "-m", "gpunn", *rest]
    return subprocess.call(cmd, env={**os.environ, RANKED: "1"})


def train(args: argparse.Namespace) -> int:
    import gpunn as nn

    from . import checks

    ranked = RANKED in os.environ  # one of the ranks relaunch started
    rank = nn.distributed.init().rank if ranked else 0
    if rank != 0:  # one rank talks: rank 0
        args.quiet, args.save, args.plot = True, None, None
        logging.getLogger("gpunn").handlers.clear()
    _outputs(args)
    toy = args.dataset in TOY
    X, y, X_test, y_test = _dataset(args)
    if X.ndim != 2:
        raise ValueError(f"the data's X must be 2-D (samples, features); got shape {X.shape}")
    classes = int(y.shape[1]) if y.ndim == 2 else checks.class_count(y, "the data's y")
    hidden = args.hidden or ([64] if toy else [256, 128])
    sizes = [X.shape[1], *hidden, classes]
    nn.set_seed(args.seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Dense(a, b) if toy else nn.Dense(a, b, init="he"))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    decay = args.decay if args.decay is not None else (5e-7 if toy else 1e-4)
    model = nn.Sequential(layers)
    model.compile(loss=nn.SoftmaxCrossEntropy(),
                  optimizer=_optimizer(args.optimizer, args.lr, decay, toy), backend=args.backend)
    epochs = args.epochs if args.epochs is not None else (10_001 if toy else 50)
    batch_size = args.batch_size if args.batch_size is not None or toy else 32
    resume = args.checkpoint if args.resume and os.path.exists(args.checkpoint) else None
    start = time.perf_counter()
    try:
        # Held-out data is evaluated every epoch: the bar and --plot show validation too.
        history = model.fit(X, y, epochs=epochs, batch_size=batch_size, seed=args.seed,
                            verbose=0 if args.quiet else 1, checkpoint=args.checkpoint,
                            checkpoint_every=args.checkpoint_every, resume_from=resume,
                            validation_data=None if toy else (X_test, y_test), distributed=ranked)
    except KeyboardInterrupt:
        raise Interrupted("" if args.checkpoint is None else
                          f"; {args.checkpoint} holds the last finished epoch: run the same "
                          f"command with --resume to go on from there") from None
    model.backend.synchronize()
    seconds = time.perf_counter() - start
    if args.save:
        model.save(args.save)
    if args.plot:
        history.plot(args.plot)
    result = model.evaluate(X_test, y_test)
    if rank == 0:
        where = "" if toy else "test "
        print(f"{where}accuracy {result['accuracy']:.3f} loss {result['loss']:.3f} "
              f"({model.backend.name}, {seconds:.1f} s)")
    return 0


class Interrupted(Exception):
    """Ctrl-C, with what was kept (the message's end)."""


def predict(args: argparse.Namespace) -> int:
    import gpunn as nn

    from . import files

    if args.output is not None:
        if not args.output.endswith((".npz", ".csv")):
            raise ValueError(f"--output must end in .npz or .csv (the two formats written); got "
                             f"{args.output!r}")
        files.check_writable(args.output, "--output")
    model = nn.load(args.model, backend=args.backend)
    arrays = nn.datasets.read_npz(args.data)
    if "X" not in arrays:
        raise ValueError(f"{args.data} must hold an array named X; it has {', '.join(arrays) or 'none'}")
    X, y = arrays["X"], arrays.get("y")
    outputs = model.predict(X)
    classes = outputs.argmax(axis=1) if outputs.shape[1] > 1 else (outputs[:, 0] > 0.5).astype(int)
    if args.output is None:
        print("\n".join(map(str, classes.tolist())))
    else:
        files.write_atomic(args.output, _predictions_file(args.output, classes, outputs))
    if y is not None:
        print(f"accuracy {model.evaluate(X, y)['accuracy']:.3f} on {len(X)} samples", file=sys.stderr)
    return 0


def _predictions_file(path: str, classes: np.ndarray, outputs: np.ndarray) -> bytes:
    """What ``predict --output`` writes: .csv, one row per sample, or .npz with both arrays."""
    buffer = BytesIO()
    if path.endswith(".csv"):
        header = "prediction," + ",".join(f"output_{j}" for j in range(outputs.shape[1]))
        np.savetxt(buffer, np.column_stack([classes, outputs]), delimiter=",", header=header,
                   comments="", fmt=["%d"] + ["%.6g"] * outputs.shape[1])
    else:
        np.savez(buffer, predictions=classes, outputs=outputs)
    return buffer.getvalue()


def info() -> int:
    import gpunn as nn
    from gpunn.backends import cupy_problem

    print(f"gpunn {nn.__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(f"backends available: {', '.join(nn.backends.available())}")
    from gpunn.backends import blas

    cores = os.cpu_count()
    print(f"numpy {np.__version__}; BLAS: {blas.describe()}; CPU: "
          f"{nn.backends.get_backend('numpy').device_name()} ({cores} cores)")
    warning = blas.forced_kernel_warning()
    if warning:
        print(f"warning: {warning}")
    from gpunn.backends import jit, jit_cache

    trainer_why_not = jit.why_not()
    if trainer_why_not is None:
        print(f"CPU one-kernel trainer: on by default for Dense -> ReLU -> Dense networks of up to "
              f"{jit.COLUMNS_UP_TO} inputs and classes together; "
              f"model.backend.one_kernel_trainer = False turns it off")
        folder = jit_cache.folder()
        print(f"compiled trainers kept in {folder}" if folder else
              f"compiled trainers kept nowhere ({jit_cache.ENV} is empty)")
    else:
        print(f"CPU one-kernel trainer: unavailable ({trainer_why_not})")
    from gpunn.backends import passes

    passes_why_not = passes.why_not()
    print("CPU element-wise passes compiled: " + (
        f"on arrays of {passes.COMPILED_FROM:,} elements or more, once a process has taken "
        f"{passes.NUMPY_FIRST:,} elements through NumPy's calls" if passes_why_not is None
        else f"no, NumPy's calls ({passes_why_not})"))
    problem = cupy_problem()
    if problem:
        print(f"cupy: unavailable ({problem})")
    else:
        import cupy

        bk = nn.backends.get_backend("cupy")
        runtime = cupy.cuda.runtime.runtimeGetVersion()
        print(f"cupy {cupy.__version__}; CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}; "
              f"device: {bk.device_name()}")
        print(gpu_paths(bk))
    return 0


def gpu_paths(bk) -> str:
    """Which fast paths the CuPy backend ``bk`` takes here, and why not where it does not: the
    reasons ``bk.why_not`` gives, which the training steps read too."""
    from .backends.cuda.launch import NARROW_OUTPUTS

    parts = []
    for label, feature in (("CUDA graphs", "graphs"), ("cuBLASLt epilogues", "epilogues"),
                           ("one-kernel trainer", "one_kernel_trainer"),
                           ("precision tf32", "tf32"), ("precision bf16", "bf16")):
        reason = bk.why_not(feature)
        parts.append(f"{label}: {'yes' if reason is None else f'no ({reason})'}")
    if bk.why_not("epilogues") is None:
        parts[1] += f", policy {bk.epilogue_policy!r}, GEMMs {'' if bk.tune_gemms else 'un'}tuned"
    parts.append(f"narrow kernels: {'on' if bk.narrow_kernels else 'off'} (Dense layers of up to "
                 f"{NARROW_OUTPUTS} outputs, where faster than GEMMs)")
    parts.append(f"weight gradients on a second stream: {'on' if bk.overlap_weight_grads else 'off'}"
                 f" (overlap_weight_grads; in recorded steps)")
    return "; ".join(parts)


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        return train(args)
    if args.command == "predict":
        return predict(args)
    if args.command == "bench":
        from . import bench

        return bench.main(args)
    return info()


def _one_line(message: Warning | str, *_: object, **__: object) -> None:
    """A warning as the command line says it: one line on stderr, no source file or line."""
    print(f"gpunn: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version or a bad option (its one line already printed)
        return stop.code if isinstance(stop.code, int) else 2
    if args.command == "train" and args.nproc > 1 and RANKED not in os.environ:
        return relaunch(argv, args.nproc)
    debug = args.debug or os.environ.get("GPUNN_DEBUG", "") not in ("", "0")
    if not getattr(args, "quiet", False):
        _log_to_stderr()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line  # catch_warnings puts it back
            return _run(args)
    except (KeyboardInterrupt, Interrupted) as exc:
        if debug:
            raise
        print(f"gpunn: interrupted{exc if isinstance(exc, Interrupted) else ''}", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        message = str(exc) or type(exc).__name__
        if isinstance(exc, MemoryError):
            message = f"not enough memory ({message}): try smaller layers or batches"
        print(f"gpunn: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
