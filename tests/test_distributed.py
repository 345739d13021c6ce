"""Distributed training (gpunn.distributed, fit(distributed=True)) on 2 MPI ranks of this CPU:
the same steps as one process with the same global batch (exactly those of an in-process
emulation of the ranks), mismatches and failing ranks that end the job instead of hanging it,
resume across rank counts, output from rank 0 only. Each run is an `mpiexec` subprocess killed
whole on a timeout."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from support.ranks import emulate_ranks, run_ranks

import gpunn as nn
from gpunn.distributed import part

TRAIN = """
    import sys
    import numpy as np
    import gpunn as nn
    from mpi4py import MPI

    dtype, optimizer, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 16, init="he"), nn.ReLU(), nn.Dense(16, 3)])
    opt = nn.SGD(lr=0.5, momentum=0.9) if optimizer == "momentum" else nn.Adam(lr=0.02)
    model.compile(nn.SoftmaxCrossEntropy(), opt, backend="numpy", dtype=dtype)
    history = model.fit(X, y, epochs=EPOCHS, batch_size=batch, seed=3, verbose=0,
                        distributed=True)
    np.savez(OUT + f"/rank{MPI.COMM_WORLD.rank}.npz", *model.get_params(),
             loss=np.array(history["loss"]), steps=model.optimizer.iterations)
"""


def model(dtype, optimizer):
    nn.set_seed(0)
    m = nn.Sequential([nn.Dense(2, 16, init="he"), nn.ReLU(), nn.Dense(16, 3)])
    opt = nn.SGD(lr=0.5, momentum=0.9) if optimizer == "momentum" else nn.Adam(lr=0.02)
    return m.compile(nn.SoftmaxCrossEntropy(), opt, backend="numpy", dtype=dtype)


def script(template, folder, epochs):
    return f"EPOCHS = {epochs}\nOUT = {str(folder)!r}\n" + template.replace("\n    ", "\n")


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("batch", [20, 25, 1])  # even parts, uneven parts, a part left empty
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_ranks_take_the_steps_of_one_process(tmp_path, dtype, optimizer, batch):
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    epochs = max(1, 50 // -(-60 // batch))  # about 50 steps
    if batch == 1:
        epochs = 1  # 60 steps, each with an empty part on rank 1
    code = script(TRAIN, tmp_path, epochs)
    code = f"import sys; sys.argv[1:] = {[dtype, optimizer, str(batch)]!r}\n" + code
    done = run_ranks(2, code, tmp_path)
    assert done.returncode == 0, done.stderr
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for key in ranks[0].files:  # every rank holds the same model and history
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
    got = [ranks[0][f"arr_{i}"] for i in range(4)]
    single = model(dtype, optimizer)
    history = single.fit(X, y, epochs=epochs, batch_size=batch, seed=3, verbose=0)
    assert int(ranks[0]["steps"]) == single.optimizer.iterations
    tol = 1e-12 if dtype == "float64" else 1e-4
    for a, b in zip(got, single.get_params()):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    np.testing.assert_allclose(ranks[0]["loss"], history["loss"], rtol=tol)
    emulated = model(dtype, optimizer)
    emulate_ranks(emulated, X, y, epochs, batch, seed=3, size=2)
    for a, b in zip(got, emulated.get_params()):
        np.testing.assert_array_equal(a, b)  # the same sums in the same order: bit for bit


def test_parts_cover_each_batch_once():
    for rows in (0, 1, 5, 60):
        for size in (1, 2, 3, 7):
            parts = [part(rows, size, r) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1


def test_ranks_that_disagree_all_say_on_what(tmp_path):
    code = """
        import gpunn as nn
        from mpi4py import MPI
        X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
        rows = 60 - MPI.COMM_WORLD.rank  # rank 1 has one sample fewer
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy")
        try:
            model.fit(X[:rows], y[:rows], epochs=2, batch_size=16, verbose=0, distributed=True)
        except ValueError as exc:
            with open(OUT + f"/rank{MPI.COMM_WORLD.rank}.txt", "w") as f:
                f.write(str(exc))
    """
    done = run_ranks(2, f"OUT = {str(tmp_path)!r}\n" + code.replace("\n        ", "\n"), tmp_path,
                     timeout=60)
    assert done.returncode == 0, done.stderr
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.txt").read_text() == (
            "the ranks of this run disagree on what they train: samples: rank 0 has 60, rank 1 "
            "has 59")


def test_a_rank_that_raises_ends_the_job(tmp_path):
    code = """
        import numpy as np
        import gpunn as nn
        from mpi4py import MPI
        X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
        if MPI.COMM_WORLD.rank == 1:
            X = X.copy()
            X[7, 0] = np.nan
        model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy")
        model.fit(X, y, epochs=2, batch_size=16, verbose=0, distributed=True)
    """
    started = time.monotonic()
    done = run_ranks(2, code, tmp_path, timeout=60)
    assert done.returncode != 0 and time.monotonic() - started < 30
    assert "X must be finite; got nan at row 7" in done.stderr


def test_a_checkpoint_of_two_ranks_resumes_on_one_and_only_rank_0_talks(tmp_path):
    code = """
        import gpunn as nn
        X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="numpy", dtype="float64")
        model.fit(X, y, epochs=3, batch_size=16, seed=1, verbose=2, distributed=True,
                  checkpoint=CK)
    """
    ck = tmp_path / "ck.safetensors"
    done = run_ranks(2, f"CK = {str(ck)!r}\n" + code.replace("\n        ", "\n"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stderr.splitlines() if line.startswith("epoch ")] \
        == ["1/3", "2/3", "3/3"]  # one line an epoch: rank 0's
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors"] == ["ck.safetensors"]
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    nn.set_seed(0)
    resumed = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    resumed.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="numpy", dtype="float64")
    resumed.fit(X, y, epochs=6, batch_size=16, seed=1, verbose=0, resume_from=ck)
    nn.set_seed(0)
    whole = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    whole.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="numpy", dtype="float64")
    whole.fit(X, y, epochs=6, batch_size=16, seed=1, verbose=0)
    for a, b in zip(resumed.get_params(), whole.get_params()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert resumed.optimizer.iterations == whole.optimizer.iterations


def test_a_resume_into_another_run_on_two_ranks_warns_once(tmp_path):
    """A one-process checkpoint of batches of 16, resumed on two ranks in batches of 8: the run
    goes on, and the warning that it is not the first run's comes from rank 0 alone."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="numpy")
    ck = tmp_path / "ck.safetensors"
    model.fit(X, y, epochs=2, batch_size=16, seed=1, verbose=0, checkpoint=ck)
    code = f"""
        import gpunn as nn
        X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
        model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="numpy")
        model.fit(X, y, epochs=3, batch_size=8, seed=1, verbose=0, distributed=True,
                  resume_from={str(ck)!r})
        assert model.optimizer.iterations == 2 * 4 + 8, model.optimizer.iterations
    """
    done = run_ranks(2, code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("UserWarning: resuming from") == 1, done.stderr
    assert "60 rows in batches of 16, shuffled; this fit is over 60 rows in batches of 8" \
        in done.stderr


def test_a_launcher_whose_mpi_is_not_mpi4pys_is_named(tmp_path):
    import subprocess

    code = "import gpunn.distributed as d; d.init()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "PMI_SIZE": "4"})
    assert done.returncode != 0
    assert "the launcher started 4 processes, but each sees an MPI world of 1" in done.stderr


class StandInNccl:
    """cupy.cuda.nccl's names, and a communicator that records its calls."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0

    def __init__(self):
        self.calls = []

    def get_unique_id(self):
        return ("uid", 42)

    def NcclCommunicator(self, size, uid, rank):  # noqa: N802 - CuPy's name
        self.calls.append(("comm", size, uid, rank))
        return self

    def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802 - NCCL's name
        self.calls.append(("allReduce", send, recv, count, dtype, op, stream))


class OneRank:
    rank, size = 0, 1

    def bcast(self, value, root=0):
        return value


def test_nccl_sums_in_place_on_the_current_stream():
    """The NCCL call's arguments on the CPU, against a stand-in communicator."""
    import types

    from support.cuda import DeviceLike

    from gpunn.distributed import NcclSum

    nccl = StandInNccl()
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_current_stream=lambda: types.SimpleNamespace(ptr=77)))
    summed = NcclSum(OneRank(), nccl=nccl, cupy=cupy)
    grads = DeviceLike(np.zeros(10, np.float32))
    grads.flags = types.SimpleNamespace(c_contiguous=True)
    summed.allreduce(grads)
    assert nccl.calls == [("comm", 1, ("uid", 42), 0),
                          ("allReduce", grads.data.ptr, grads.data.ptr, 10, 7, 0, 77)]
    with pytest.raises(TypeError, match="NCCL sums contiguous float32/float64 arrays"):
        bad = DeviceLike(np.zeros(4, np.int64))
        bad.flags = types.SimpleNamespace(c_contiguous=True)
        summed.allreduce(bad)


@pytest.mark.gpu
def test_a_one_rank_nccl_sum_inside_a_captured_step_changes_nothing():
    """A 1-rank NCCL all-reduce recorded in the planned step's CUDA graph: the same training."""
    from conftest import CUPY_PROBLEM

    if CUPY_PROBLEM:
        pytest.skip(f"no CUDA device: {CUPY_PROBLEM}")
    pytest.importorskip("cupy.cuda.nccl")
    from gpunn.distributed import NcclSum

    class NcclOneRank(OneRank):
        def __init__(self):
            self.nccl = NcclSum(self)

        def allreduce(self, array):
            self.nccl.allreduce(array)  # even for one rank: the call is what is tested

    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    runs = []
    for group in (None, NcclOneRank()):
        nn.set_seed(0)
        m = nn.Sequential([nn.Dense(2, 32), nn.ReLU(), nn.Dense(32, 3)])
        m.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="cupy")
        m.backend.one_kernel_trainer = False  # the planned step, where the all-reduce is recorded
        m.network.group = group
        for _ in range(20):
            m.train_step(X, y)  # planned, and captured as a graph from the second call
        runs.append(m.get_params())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
