"""Data-parallel training over processes and machines, as Horovod and PyTorch DDP do it: MPI
(mpi4py, from the ``mpi`` extra) launches and coordinates the ranks; on GPUs, NCCL (through
CuPy) sums the gradients.

    mpiexec -n 4 python -m mpi4py train.py       # in train.py: model.fit(..., distributed=True)
    gpunn train --nproc 4                        # the command line re-launches itself so

``init()`` returns the ``Group`` of this run: ``rank``, ``size``, ``local_rank`` (among the ranks
of this machine) and the collectives ``allreduce``, ``bcast``, ``barrier``. On a machine with
GPUs it binds each rank to one (``local_rank`` modulo the device count) before any backend
exists. ``fit(..., distributed=True)`` then keeps ``batch_size`` the global batch: every rank
takes a contiguous part of each batch, scales its gradient by its share of the rows, and one
in-place sum of the flat gradient buffer over all ranks precedes the update, so N ranks take the
steps one process would. ``python -m mpi4py`` makes a rank that raises abort the whole job.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from typing import Any

import numpy as np

from .backends import on_device

#: Seconds ranks wait for each other to compare settings before saying which one is missing.
AGREE_TIMEOUT = 60.0
#: Environment variables launchers set to the number of processes they started.
LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")

_group: Group | None = None


class Group:
    """The ranks of one run, over an MPI communicator (``comm``); ``nccl`` sums device arrays
    when the ranks train on GPUs (made on first use)."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(_mpi().COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.nccl: Any = None

    def __repr__(self) -> str:
        return f"Group(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # ---- collectives ---------------------------------------------------------------------

    def allreduce(self, array: Any) -> Any:
        """Sum ``array`` over all ranks, in place (NumPy through MPI, CuPy through NCCL)."""
        if self.size == 1:
            return array
        if on_device(array):
            self._nccl().allreduce(array)
        else:
            self.comm.Allreduce(_mpi().IN_PLACE, array, op=_mpi().SUM)
        return array

    def bcast(self, value: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``value`` (any picklable object) on every rank."""
        return value if self.size == 1 else self.comm.bcast(value, root=root)

    def all_agree(self, yes: bool) -> bool:
        """Whether ``yes`` holds on every rank (each rank's answer in, the same answer out)."""
        return bool(yes) if self.size == 1 else bool(self.comm.allreduce(int(bool(yes)),
                                                                         op=_mpi().MIN))

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def _nccl(self) -> Any:
        if self.nccl is None:
            self.nccl = NcclSum(self)
        return self.nccl

    # ---- agreeing before training --------------------------------------------------------

    def agree(self, settings: dict[str, int], timeout: float = AGREE_TIMEOUT) -> None:
        """Raise ValueError on every rank unless all ranks have the same ``settings`` (whole
        numbers: sizes, counts, codes), naming each difference; RuntimeError naming the ranks
        that do not answer within ``timeout`` seconds, instead of hanging."""
        if self.size == 1:
            return
        mine = np.array(list(settings.values()), dtype=np.int64)
        every = np.empty((self.size, mine.size), dtype=np.int64)
        request = self.comm.Iallgather(mine, every)
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {self.rank}: not every rank reached fit within {timeout:.0f} s "
                                   f"(a rank failed, or runs other code); stopping")
            time.sleep(0.001)
        differ = [f"{name}: " + ", ".join(f"rank {r} has {every[r, i]}" for r in range(self.size))
                  for i, name in enumerate(settings) if len(set(every[:, i].tolist())) > 1]
        if differ:
            raise ValueError("the ranks of this run disagree on what they train: "
                             + "; ".join(differ))


class NcclSum:
    """In-place sums of CuPy arrays over the group's ranks with one NCCL communicator, on the
    current stream (so a CUDA graph captures it; NCCL 2.9 and later allow that). The unique id
    comes from rank 0 over MPI."""

    def __init__(self, group: Group, nccl: Any = None, cupy: Any = None) -> None:
        if nccl is None:
            import cupy
            from cupy.cuda import nccl
        self.nccl, self.cupy = nccl, cupy
        uid = group.bcast(nccl.get_unique_id() if group.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(group.size, uid, group.rank)

    def allreduce(self, array: Any) -> None:
        kinds = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                 np.dtype(np.float64): self.nccl.NCCL_FLOAT64}
        if np.dtype(array.dtype) not in kinds or not array.flags.c_contiguous:
            raise TypeError(f"NCCL sums contiguous float32/float64 arrays; got {array.dtype}")
        ptr = array.data.ptr
        self.comm.allReduce(ptr, ptr, math.prod(array.shape), kinds[np.dtype(array.dtype)],
                            self.nccl.NCCL_SUM, self.cupy.cuda.get_current_stream().ptr)


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError('distributed training needs mpi4py and an MPI: pip install "gpunn[mpi]"') \
            from None
    return MPI


def init() -> Group:
    """The run's Group (made once): MPI's world communicator. On a machine with GPUs each rank
    is bound to one before any backend is made. Raises RuntimeError when a launcher started
    several processes that each see an MPI world of one (its MPI is not mpi4py's)."""
    global _group
    if _group is not None:
        return _group
    group = Group(_mpi().COMM_WORLD)
    launched = [int(os.environ[name]) for name in LAUNCHER_SIZES
                if os.environ.get(name, "").isdigit()]
    if group.size == 1 and any(n > 1 for n in launched):
        raise RuntimeError(f"the launcher started {max(launched)} processes, but each sees an MPI "
                           f"world of 1: mpiexec belongs to another MPI than mpi4py's. Use the "
                           f"mpiexec of the MPI mpi4py was built with (gpunn[mpi] brings MPICH's)")
    _bind_gpu(group)
    _group = group
    return group


def current() -> Group | None:
    """The Group ``init()`` made, or None before."""
    return _group


def _bind_gpu(group: Group) -> None:
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device: the ranks train on CPUs
        return
    if count > 0:
        cupy.cuda.Device(group.local_rank % count).use()


def mpiexec() -> str:
    """The mpiexec of the MPI beside this Python (gpunn[mpi]'s MPICH), else the one on PATH."""
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError('running on several processes needs mpiexec: pip install '
                                '"gpunn[mpi]" (MPICH from wheels)')
    return found


def part(rows: int, size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [lo, hi) of ``rows`` rows cut into ``size`` parts: the
    first ``rows % size`` parts one row longer; a part may be empty."""
    base, extra = divmod(rows, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)
