"""Denormal numbers flushed to zero while the compiled CPU trainer runs (x86-64, with numba).

Why: a float32 below 1.2e-38 (float64: 2.2e-308) is "denormal", and an x86 CPU takes a slow
microcode path for an arithmetic instruction that reads or makes one. Training makes them: once
the book's network is confident, some wrong classes' probabilities fall below 1e-38, and so do
their gradients and every product with them (measured on the book's
float32 run: none by epoch 100, the first by epoch 1,000, 6 gradients and 128 products a step by
epoch 10,000). With the compiled trainer (jit.py) the book's run took 0.27 s computing them and
0.13 s with them flushed. The CPU's MXCSR register has two switches for this: FTZ (a result that
would be denormal is 0) and DAZ (a denormal operand is read as 0). JAX runs its CPU code with
results flushed (measured here: 1e-30 * 1e-10 in float32 is 0 under ``jax.jit``, 1e-40 in
NumPy).

``flushed()`` turns both on for the calling thread around a block and puts the register back as
it was when the block ends, by exception or not, so NumPy's own operations keep IEEE denormals.
It changes nothing but values below the smallest normal number. Where it cannot (not x86-64, or
no numba) it does nothing, and ``why_not()`` says why. numba is imported, and the register's
readers compiled, on first use (numba_import.py).
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Callable, Iterator
from typing import Any

from . import numba_import

#: MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) switches.
FTZ_DAZ = 0x8040


def why_not() -> str | None:
    """None where ``flushed`` flushes (x86-64 with numba; asking imports numba), else why not."""
    machine = platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return f"x86-64 only (this is {machine})"
    return numba_import.why_not()


#: The calling thread's MXCSR read and written: numba intrinsics that ``intrinsics()`` makes
#: (they need numba), for the functions of REGISTERS.
read_register: Any = None
write_register: Any = None

#: Functions that read and write the register, as a module's source: compiled by numba, from a
#: file where the caller keeps compiled code (jit.py, through jit_cache: compiling them took
#: about 0.1 s of every process's first trainer), else in memory (``registers``).
REGISTERS = ("import numba\n\n"
             "from gpunn.backends.denormals import read_register, write_register\n\n\n"
             "def read():\n"
             "    return read_register()\n\n\n"
             "def write(value):\n"
             "    write_register(numba.uint32(value))\n")


@functools.cache
def intrinsics() -> None:
    """Make ``read_register`` and ``write_register`` (the first call imports numba)."""
    global read_register, write_register
    numba_import.numba()
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    def through(builder: Any, name: str, slot: Any) -> None:
        """Call LLVM's stmxcsr or ldmxcsr on the 4 bytes at ``slot``."""
        byte_pointer = ir.IntType(8).as_pointer()
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer]), name)
        builder.call(function, [builder.bitcast(slot, byte_pointer)])

    @intrinsic
    def read(typingctx):  # type: ignore[no-untyped-def]
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            through(builder, "llvm.x86.sse.stmxcsr", slot)
            return builder.load(slot)
        return types.uint32(), codegen

    @intrinsic
    def write(typingctx, value):  # type: ignore[no-untyped-def]
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            through(builder, "llvm.x86.sse.ldmxcsr", slot)
            return context.get_dummy_value()
        return types.void(types.uint32), codegen

    read_register, write_register = read, write


@functools.cache
def registers() -> tuple[Callable[[], int], Callable[[int], None]]:
    """REGISTERS' read and write, compiled in this process (for callers that keep no file)."""
    intrinsics()
    namespace: dict[str, Any] = {}
    exec(compile(REGISTERS, "<gpunn.backends.denormals registers>", "exec"), namespace)
    njit = numba_import.numba().njit
    return njit(namespace["read"]), njit(namespace["write"])


def mxcsr() -> int:
    """The calling thread's MXCSR register (where ``why_not`` is None)."""
    return registers()[0]()


def set_mxcsr(value: int) -> None:
    """Write the calling thread's MXCSR register (where ``why_not`` is None)."""
    registers()[1](value)


@contextlib.contextmanager
def flushed(compiled: tuple[Callable[[], int], Callable[[int], None]] | None = None
            ) -> Iterator[None]:
    """Denormal results and operands are 0 in this thread inside the block (where ``why_not``
    is None); the register is as it was after it. ``compiled``: REGISTERS' read and write as
    the caller compiled them (None: ``registers()``)."""
    if why_not() is not None:
        yield
        return
    read, write = compiled or registers()
    before = read()
    write(before | FTZ_DAZ)
    try:
        yield
    finally:
        write(before)
