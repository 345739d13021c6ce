"""Crafting model files as an attacker (or a damaged disk) would: a valid file's tensors and
gpunn metadata read back, changed, and written again as safetensors."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def read_model_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and the decoded gpunn metadata of a file gpunn wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["gpunn"])
        return {key: f.get_tensor(key) for key in f.keys()}, meta


def rewrite(path: Path, out: Path, meta: Callable[[dict], Any] | None = None,
            tensors: Callable[[dict], Any] | None = None) -> Path:
    """``path`` written to ``out`` after ``meta(metadata)`` and ``tensors(tensors)`` changed
    their argument in place."""
    from safetensors.numpy import save_file

    values, metadata = read_model_file(path)
    if meta is not None:
        meta(metadata)
    if tensors is not None:
        tensors(values)
    save_file(values, str(out), metadata={"gpunn": json.dumps(metadata)})
    return out


def header(path: Path) -> tuple[int, dict[str, Any]]:
    """The safetensors header of ``path``: its declared length and its JSON."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8:8 + length])


def with_header(path: Path, out: Path, change: Callable[[dict], Any],
                length: Callable[[int], int] | None = None) -> Path:
    """``path`` with its raw safetensors header changed (tensor shapes, offsets, dtypes, ...):
    ``change(header)`` in place, and the declared length ``length(true_length)`` if given."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    head = json.loads(data[8:8 + size])
    change(head)
    text = json.dumps(head).encode()
    text += b" " * (-len(text) % 8)
    declared = len(text) if length is None else length(len(text))
    out.write_bytes(struct.pack("<Q", declared) + text + data[8 + size:])
    return out
