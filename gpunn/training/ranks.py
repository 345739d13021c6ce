"""fit's side of distributed training: what the ranks agree on before any of them trains, and
what rank 0 hands the others (the seed, a checkpoint it read, its parameters and optimizer
state). Everything here runs before training, on every rank, in the same order."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..distributed import Group
from ..network import Network

#: The errors a rank-0 read may raise that every rank raises again (the checks' kinds).
PASSED_ON = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError)


def settings(network: Network, samples: int, validation: int, batch: int, epochs: int,
             seed: int | None, shuffle: bool) -> dict[str, int]:
    """What every rank must have the same of, as whole numbers for one gather."""
    rule = f"{type(network.loss).__name__} {network.optimizer!r} {network.metrics}"
    return {"samples": samples, "validation samples": validation,
            "features": network.n_inputs, "outputs": network.n_outputs,
            "parameters": int(network.params.size), "batch_size": batch, "epochs": epochs,
            "seed (-1: none)": -1 if seed is None else int(seed), "shuffle": int(bool(shuffle)),
            "dtype bytes": network.dtype.itemsize,
            "backend (0: numpy, 1: cupy)": int(network.backend.name == "cupy"),
            "loss, optimizer and metrics (a checksum)": zlib.crc32(rule.encode())}


def read_on_rank0(group: Group, read: Callable[[], Any]) -> Any:
    """``read()`` on rank 0 (which may be the only one that sees the file), its result on every
    rank; a check it fails is raised on every rank."""
    outcome: Any = None
    if group.rank == 0:
        try:
            outcome = ("value", read())
        except PASSED_ON as exc:
            outcome = ("error", type(exc), str(exc))
    outcome = group.bcast(outcome)
    if outcome[0] == "error":
        raise outcome[1](outcome[2])
    return outcome[1]


def seed_for(group: Group, seed: int | None) -> int:
    """Rank 0's seed (drawn there when none was given) on every rank: the same shuffles and
    dropout masks everywhere."""
    if group.rank == 0 and seed is None:
        seed = int(np.random.default_rng().integers(2**63))
    return group.bcast(seed)


def share_state(group: Group, network: Network) -> None:
    """Rank 0's parameters and optimizer state on every rank."""
    state = group.bcast(network.state_dict(host=True) if group.rank == 0 else None)
    if group.rank != 0:
        network.load_state_dict(state)
