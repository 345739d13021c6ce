"""The data-parallel rows of ``gpunn bench --nproc N``: a workload trained by ``fit(...,
distributed=True)`` on N MPI ranks, and on one rank the same way, so the two compare.

Run by the suite as ``mpiexec -n N python -m mpi4py -m gpunn.bench.ranks WORKLOAD BACKEND
REPEATS SECONDS``; rank 0 prints one JSON line: the median ms per step over the repeats (each a
``fit`` of as many epochs as fill SECONDS, over BATCHES copies of the workload's batch) and the
quartiles. The global batch is the workload's at every rank count (strong scaling): with N ranks
each takes 1/N of it, so perfect scaling is 1/N of one rank's step time. CPU ranks on one
machine split its cores between their BLAS thread pools.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np

from .. import distributed
from .report import quartiles
from .workloads import WORKLOADS, initial_params, workload_data

BATCHES = 4


def measure(workload: str, backend: str, repeats: int, seconds: float) -> dict[str, float]:
    from .contenders import gpunn_model

    group = distributed.init()
    if backend == "numpy":  # ranks on one machine share its cores: BLAS threads split among them
        from threadpoolctl import threadpool_limits

        threadpool_limits(max(1, (os.cpu_count() or 1) // group.local_size))
    w = WORKLOADS[workload]
    X, y = workload_data(w)
    model = gpunn_model(w, initial_params(w.sizes), backend, "fp32")
    Xh, yh = np.tile(X, (BATCHES, 1)), np.tile(y, BATCHES)

    def fit(epochs: int) -> float:
        group.barrier()
        started = time.perf_counter()
        model.fit(Xh, yh, epochs=epochs, batch_size=w.batch, shuffle=False, verbose=0,
                  distributed=True)
        model.backend.synchronize()
        group.barrier()
        return (time.perf_counter() - started) * 1e3 / (epochs * BATCHES)

    per_step = fit(1)  # warm-up, and a first guess of the epochs that fill ``seconds``
    epochs = group.bcast(max(1, int(seconds * 1e3 / (per_step * BATCHES))))
    times = [fit(epochs) for _ in range(repeats)]
    q1, q3 = quartiles(times)
    return {"step_ms": statistics.median(times), "step_ms_q1": q1, "step_ms_q3": q3,
            "repeats": len(times), "ranks": group.size}


def main(argv: list[str]) -> int:
    workload, backend, repeats, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    result = measure(workload, backend, repeats, seconds)
    if distributed.init().rank == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
