"""Running code on several MPI ranks from a test: ``mpiexec -n N python -m mpi4py script`` as a
subprocess in its own process group, killed whole on a timeout (CI never hangs), and an
in-process emulation of what N ranks compute, for exact comparisons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpunn.distributed import mpiexec as gpunn_mpiexec
from gpunn.distributed import part
from gpunn.training.batches import epoch_batches

#: Where the mpi extra has no MPI wheel (Windows, Intel macOS) the multi-rank tests skip;
#: everywhere else a missing MPI fails them.
MPI_WHEELS = sys.platform == "linux" or (sys.platform == "darwin" and os.uname().machine == "arm64")


def mpiexec() -> str:
    if not MPI_WHEELS:
        pytest.importorskip("mpi4py", reason="no MPI wheel for this platform")
    return gpunn_mpiexec()  # FileNotFoundError, naming the extra, where it is missing


def run_ranks(n: int, code: str, folder: Path, timeout: float = 120,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """``code`` (dedented) on ``n`` ranks under ``python -m mpi4py`` (a rank that raises aborts
    the job); the whole process group is killed if it runs past ``timeout`` seconds."""
    script = folder / "ranks_script.py"
    script.write_text(textwrap.dedent(code))
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", str(script)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{n} ranks ran past {timeout} s; killed. stderr:\n{err}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def emulate_ranks(model, X, y, epochs: int, batch_size: int, seed: int, size: int) -> None:
    """Train ``model`` (NumPy backend, no dropout) as ``size`` ranks would, in this process:
    each batch cut into the same contiguous parts, each part's mean gradient scaled by its share
    and summed in rank order (what MPI's sum of two ranks gives), one update."""
    net = model.network
    X, y = net.prepare(X, y)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for batch in epoch_batches(X.shape[0], batch_size, True, rng, net.backend):
            total = None
            for rank in range(size):
                lo, hi = part(batch.rows, size, rank)
                if hi > lo:
                    rows = batch.order[batch.start + lo:batch.start + hi]
                    outputs = net.forward(X[rows], training=True)
                    net.loss.train(outputs, y[rows])
                    net.backward(net.loss.dinputs)
                    mine = np.multiply(net.grads, (hi - lo) / batch.rows)
                else:
                    mine = np.zeros_like(net.grads)
                total = mine if total is None else total + mine
            net.grads[...] = total
            net.optimizer.step(net.params, net.grads)
