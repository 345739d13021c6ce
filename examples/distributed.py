"""Training on several processes: the same script on every MPI rank, each taking a part of every
batch, as one process would train with the whole batch. Needs gpunn[mpi] (gpunn[cuda13-dist] on
GPUs, one GPU per rank):

    mpiexec -n 2 python -m mpi4py examples/distributed.py
    python examples/distributed.py            # one process: the same run

Rank 0 alone prints and saves.
"""

from __future__ import annotations

import gpunn as nn


def main(samples: int = 300, epochs: int = 200, batch_size: int = 128,
         path: str = "spiral-distributed.safetensors", verbose: int = 0) -> float:
    """Train and save; return the accuracy on the training data (the same on every rank)."""
    group = nn.distributed.init()
    X, y = nn.datasets.spiral_data(samples=samples, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 64, init="he"), nn.ReLU(), nn.Dense(64, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="auto")
    model.fit(X, y, epochs=epochs, batch_size=batch_size, seed=0, verbose=verbose,
              distributed=True)
    accuracy = model.evaluate(X, y)["accuracy"]
    if group.rank == 0:
        model.save(path)
        print(f"{group.size} rank(s): accuracy {accuracy:.3f}; saved {path}")
    return accuracy


if __name__ == "__main__":
    main(verbose=1)
