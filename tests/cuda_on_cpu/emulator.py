"""The CuPy backend with its CUDA kernels run on the CPU (harness.cpp), for tests without a GPU.

``build`` compiles kernels.cu with g++ (and the -D options of cuda.NVRTC_OPTIONS) into a library
whose entry points take arguments as cuLaunchKernel does. ``Launcher`` stands in for a CuPy
kernel: it checks every argument against the kernel's parameter list, read from kernels.cu (a
NumPy array of the right element type for a pointer, a NumPy scalar of the right width for a
value: what CuPy would pass), then launches (the one-kernel trainer built for the network's sizes
where the harness has it: SIZED_TRAINERS). ``emulated_backend`` is a CupyBackend whose arrays
are NumPy arrays, whose kernels (cuda/launch.py's Kernels) are Launchers, whose GEMMs are NumPy's,
and which has no CUDA graphs or cuBLASLt (a compute capability 9.0 device for precision "bf16").
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import types
from pathlib import Path
from typing import Any

import numpy as np
from support.cuda_runtime import Runtime

from gpunn.backends import cuda
from gpunn.backends.base import Backend
from gpunn.backends.cuda import launch, timing
from gpunn.backends.cuda.epilogues import EpilogueChoice
from gpunn.backends.cuda.streams import SideStream
from gpunn.backends.cupy_backend import CupyBackend

HARNESS = Path(__file__).with_name("harness.cpp")
HARNESS_CHECKS = Path(__file__).with_name("harness_checks.cu")
#: Another kernels.cu for the harness to run (barrier_mutants.py's copies); else the backend's.
KERNELS_ENV = "GPUNN_HARNESS_KERNELS"
#: The network sizes (n_in, hidden, k) the harness builds the one-kernel trainer for, as the
#: backend does on a GPU for each network: the book's, dW1 summed in a pass of its own, a hidden
#: layer wider than the block, and two classes. Other sizes run the kernel built for none (the
#: same arithmetic; test_cuda_on_cpu checks that the two give the same bits).
SIZED_TRAINERS = ((2, 64, 3), (5, 24, 3), (2, 600, 3), (3, 40, 2))
DYNAMIC_SHARED_BYTES = 256 * 1024  # harness.cpp's buffer
DEADLOCK = -1  # harness.cpp's launch: some threads of a block waited at a barrier forever
SCALARS = {"int": np.int32, "long long": np.int64, "double": np.float64, "float": np.float32,
           "unsigned short": np.uint16}
C_TYPES = {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float64: ctypes.c_double,
           np.float32: ctypes.c_float}


def build(directory: Path, defines: tuple[str, ...] = (), checks: bool = False) -> ctypes.CDLL | str:
    """The harness library, or why it cannot be built here (no g++). A build error raises.
    ``defines``: -D options besides the backend's; ``checks``: with harness_checks.cu's kernels.
    The kernels are the backend's kernels.cu, or the file GPUNN_HARNESS_KERNELS names."""
    compiler = shutil.which("g++")
    if compiler is None:
        return "no g++ here to build the CUDA-on-CPU harness"
    lib = directory / "harness.so"
    kernels = Path(os.environ.get(KERNELS_ENV, cuda.KERNELS_CU))
    if kernels.name != "kernels.cu":  # harness.cpp includes it by that name
        raise ValueError(f"{KERNELS_ENV} must name a file called kernels.cu; got {kernels}")
    defines = [option for option in cuda.NVRTC_OPTIONS if option.startswith("-D")] + list(defines)
    defines.append("-DSIZED_TRAINERS=" + " ".join(f"SIZED_TRAINER({a}, {b}, {c})"
                                                   for a, b, c in SIZED_TRAINERS))
    if checks:
        defines.append(f'-DHARNESS_CHECKS="{HARNESS_CHECKS}"')
    result = subprocess.run([compiler, "-std=c++20", "-O1", "-pthread", "-U_FORTIFY_SOURCE", "-shared",
                             "-fPIC", "-w", *defines, "-I", str(kernels.parent), str(HARNESS),
                             "-o", str(lib)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"harness.cpp did not build:\n{result.stderr[-4000:]}")
    return ctypes.CDLL(str(lib))


def kernel_parameters() -> dict[str, list[tuple[str, str]]]:
    """kernel name -> [(type, name)] for every __global__ function of kernels.cu."""
    source = re.sub(r"//[^\n]*", "", cuda.source())
    found = {}
    for name, params in re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([\w, ]+\)\s*)?"
                                   r"(\w+)\s*\(([^)]*)\)", source):
        parsed = []
        for param in params.split(","):
            words = param.replace("*", " * ").replace("const", " ").split()
            parsed.append((" ".join(words[:-1]).replace(" *", "*"), words[-1]))
        found[name] = parsed
    return found


def argument_pointers(values: list[Any]) -> Any:
    """What an entry point of the harness takes for its arguments, as cuLaunchKernel does: an
    array of pointers to each value (ctypes scalars)."""
    return (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p)
                                             for v in values])


class Launcher:
    """A kernel of kernels.cu, called like CuPy's: kernel(grid, block, args, shared_mem=0)."""

    def __init__(self, lib: ctypes.CDLL, name: str, dtype: Any,
                 params: list[tuple[str, str]], sizes: tuple[int, ...] = ()) -> None:
        suffix = "plain" if dtype is None else "float" if np.dtype(dtype) == np.float32 else "double"
        self.fn = getattr(lib, "_".join([name, suffix, *map(str, sizes)]))
        self.fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                            ctypes.c_void_p]
        self.fn.restype = ctypes.c_longlong
        self.name, self.params = name, params
        self.T = None if dtype is None else np.dtype(dtype)
        self.max_dynamic_shared_size_bytes = 48 << 10

    def _value(self, ctype: str, pname: str, arg: Any) -> Any:
        where = f"{self.name}: parameter {pname} ({ctype})"
        if ctype.endswith("*"):
            base = ctype[:-1]
            want = self.T if base == "T" else np.dtype(SCALARS[base])
            assert isinstance(arg, np.ndarray), f"{where} got {type(arg).__name__}"
            assert arg.dtype == want, f"{where} got a {arg.dtype} array"
            return ctypes.c_void_p(arg.ctypes.data)
        want = self.T.type if ctype == "T" else SCALARS[ctype]
        assert type(arg) is want, f"{where} got {type(arg).__name__}, not {want.__name__}"
        return C_TYPES[want](arg)

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        assert len(args) == len(self.params), (self.name, len(args), len(self.params))
        assert shared_mem <= min(DYNAMIC_SHARED_BYTES, max(self.max_dynamic_shared_size_bytes,
                                                           48 << 10)), (self.name, shared_mem)
        argv = argument_pointers([self._value(t, n, a) for (t, n), a in zip(self.params, args)])
        assert len(grid) == 1 or all(g == 1 for g in grid[1:]), "1-D grids only"
        block = tuple(block) + (1,) * (2 - len(block))
        past = self.fn(grid[0], block[0], block[1], shared_mem, argv)
        assert past != DEADLOCK, f"{self.name}: threads wait at a barrier that others never reach"
        assert past == 0, f"{self.name} wrote {past} bytes of shared memory past the " \
                          f"{shared_mem} it was launched with"


def emulated_backend(lib: ctypes.CDLL) -> CupyBackend:
    bk = CupyBackend.__new__(CupyBackend)
    Backend.__init__(bk, np)
    params = kernel_parameters()
    launchers: dict[tuple, Launcher] = {}

    built = set(cuda.name_expressions())  # what the backend has NVRTC build on a GPU

    def lookup(name: str, dtype: Any = None, sizes: tuple[int, ...] = ()) -> Launcher:
        sizes = tuple(sizes) if tuple(sizes) in SIZED_TRAINERS else ()
        key = (name, None if dtype is None else np.dtype(dtype), sizes)
        if key not in launchers:
            # A GPU's module has only the instances named to NVRTC (the sized trainers aside):
            # a kernel missing from cuda.TEMPLATED or PLAIN would fail there, so it fails here.
            expression = name if dtype is None else \
                f"{name}<{'float' if np.dtype(dtype) == np.float32 else 'double'}>"
            assert expression in built, f"{expression} is not in cuda.name_expressions()"
            launchers[key] = Launcher(lib, name, dtype, params[name], sizes)
        return launchers[key]

    def gemm(a, b, out, trans_a, trans_b, tf32=False):
        return Backend.gemm(bk, a, b, out, trans_a, trans_b)  # bf16 operands widened exactly

    bk.kernels = launch.Kernels(lookup, np)
    # GEMMs as NumPy's: no TF32, no graphs; bf16 operands, as the reference reads them.
    bk.blas = types.SimpleNamespace(why_not="CUDA on the CPU", why_not_bf16=None, gemm=gemm)
    bk.compute_capability = lambda: (9, 0)
    bk.epilogues = types.SimpleNamespace(available=False, why_not="CUDA on the CPU")
    bk.epilogue_choice = EpilogueChoice(None, available=False)
    # No device to time the narrow kernels against the GEMMs on: the GEMM path (NumPy's), unless
    # a test sets prefer = True.
    bk.narrow_choice = timing.Faster(None, prefer=False)
    bk.transpose_choice = timing.Faster(None, prefer=False)  # likewise: the GEMM as it is
    bk.to_numpy = lambda x: np.array(x, copy=True)
    bk.synchronize = lambda: None
    bk.max_shared_bytes = lambda: 227 << 10  # an H100's or H200's opt-in limit
    bk.free_memory = lambda: float(80 << 30)
    bk.uploader = lambda *shapes: Backend.uploader(bk, *shapes)  # plain copies: no streams here
    # No graphs here, so never inside a capture: work put aside (overlap_weight_grads) runs where
    # it is put; the side stream is a stand-in that logs its calls, for tests that say otherwise.
    bk.capturing = lambda: False
    bk.side = SideStream(Runtime(stream_name="side"))
    return bk
