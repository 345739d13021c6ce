"""Compiled CPU code kept between runs: the one-kernel trainer that jit.py writes out for a
network's sizes, and the functions with which it flushes denormals (denormals.REGISTERS), each
as a module file numba can cache.

numba compiles a function again in every process unless it is cached, and it caches only
functions that live in a file. The written-out trainer is source text made at run time, so it is
written to a file in the cache folder and imported from there; numba then keeps what it compiled
beside it (``__pycache__``). On a 2-core Xeon, a fit of the book's network's first 10 epochs
took 1.79 s compiling its trainer, 0.28 s loading it from the cache (most of that numba's own
start, paid once per process by whatever it compiles or loads first).

The folder is ``GPUNN_CACHE_DIR`` when set (empty: keep nothing), else ``$XDG_CACHE_HOME/gpunn``
or ``~/.cache/gpunn``. A file's name carries a digest of its source and of the ``salt`` (jit.py's
own text, numba's and Python's versions), so a changed trainer, or a changed helper it calls,
gets a file of its own: numba's cache looks only at the file it was given. Where the folder
cannot be written, the caller compiles in memory, as without a cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

_log = logging.getLogger("gpunn")

#: The environment variable naming the folder (empty: no cache).
ENV = "GPUNN_CACHE_DIR"


def folder() -> Path | None:
    """Where compiled code is kept, or None when ``GPUNN_CACHE_DIR`` is set empty."""
    chosen = os.environ.get(ENV)
    if chosen is not None:
        return Path(chosen).expanduser() / "jit" if chosen else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpunn" / "jit"


def module(name: str, source: str, salt: str) -> ModuleType | None:
    """The module ``source`` makes, imported from its file in the cache folder (written there,
    atomically, where it is not there already), registered in ``sys.modules`` (numba imports it
    by name when it loads cached code); None where there is no folder or it cannot be written."""
    where = folder()
    if where is None:
        return None
    digest = hashlib.sha256(f"{salt}\0{source}".encode()).hexdigest()[:20]
    path = where / f"{name}_{digest}.py"
    try:  # written again where it is missing or does not hold the source (an edit, a bad disk)
        if not path.is_file() or path.read_text() != source:
            where.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=where, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(source)
                os.replace(temp, path)  # a process beside this one writes the same text
            except BaseException:
                os.unlink(temp)
                raise
    except OSError as exc:
        _log.debug("gpunn: compiled code is not cached (%s): %s", where, exc)
        return None
    module_name = f"gpunn_jit_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    made = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = made
    try:
        spec.loader.exec_module(made)
    except BaseException:
        del sys.modules[module_name]
        raise
    return made
