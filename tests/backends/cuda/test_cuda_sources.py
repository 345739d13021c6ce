"""Every *.cu file compiles under NVRTC, for sm_80 and sm_90, with the options the CuPy backend
passes, and every kernel instance it asks for exists. Needs no GPU: the cuda-bindings and
nvidia-cuda-nvrtc wheels carry the compiler, so a kernel that would not build fails CI."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

# From the test extra (cuda-bindings + nvidia-cuda-nvrtc). It has no macOS wheels: there the check
# skips; everywhere else a missing compiler fails, never skips.
if sys.platform == "darwin":
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="no macOS build of cuda-bindings")
else:
    from cuda.bindings import nvrtc

from gpunn.backends import cuda

SOURCES = sorted(Path(cuda.__file__).parent.glob("*.cu"))


def compile_source(text: str, name: str, arch: str, expressions: list[str],
                   options: tuple[str, ...] = cuda.NVRTC_OPTIONS) -> tuple[bool, str, dict]:
    err, prog = nvrtc.nvrtcCreateProgram(text.encode(), name.encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    for expr in expressions:
        (err,) = nvrtc.nvrtcAddNameExpression(prog, expr.encode())
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    options = [f"--gpu-architecture={arch}".encode()] + [o.encode() for o in options]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    # NVRTC writes into the buffer: a bytearray, never bytes. An empty log is 1 byte, its NUL, and
    # b" " * 1 is CPython's one shared b" ", which that NUL would overwrite for the whole process
    # (on Python 3.13 a space between two f-string fields compiled afterwards went missing).
    log = bytearray(size)
    nvrtc.nvrtcGetProgramLog(prog, log)
    lowered = {}
    if err == nvrtc.nvrtcResult.NVRTC_SUCCESS:
        for expr in expressions:
            e, mangled = nvrtc.nvrtcGetLoweredName(prog, expr.encode())
            lowered[expr] = mangled if e == nvrtc.nvrtcResult.NVRTC_SUCCESS else None
    nvrtc.nvrtcDestroyProgram(prog)
    return err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace").rstrip("\x00 "), lowered


def launched_blocks() -> dict[str, int]:
    """The kernels whose blocks are largest: name -> the threads a block launches with."""
    from gpunn.backends.cuda import launch

    return {"column_sum": launch.COLUMN_SUM_THREADS,
            "relu_backward_column_sum": launch.COLUMN_SUM_THREADS,
            "relu_backward_column_sum_bf16": launch.COLUMN_SUM_THREADS,
            "narrow_dinputs_relu_bgrad": launch.COLUMN_SUM_THREADS,
            "narrow_dinputs_relu_bgrad_bf16": launch.COLUMN_SUM_THREADS,
            "narrow_forward": launch.THREADS, "narrow_weight_grads": launch.THREADS,
            "train_in_one_kernel": launch.ONE_KERNEL_THREADS}


#: The trainer as the backend builds it for the book's network (its sizes fixed).
BOOK_TRAINERS = [f"train_in_one_kernel<{t}, 2, 64, 3>" for t in ("float", "double")]


@functools.cache
def kernels_built(arch: str) -> tuple[bool, str, dict]:
    """kernels.cu compiled once per architecture for the tests below: every instance the backend
    asks NVRTC for, the book's sized trainers, and ptxas's report of each kernel's registers."""
    return compile_source(cuda.source(), "kernels.cu", arch, cuda.name_expressions() + BOOK_TRAINERS,
                          options=(*cuda.NVRTC_OPTIONS, "--ptxas-options=-v"))


def test_there_are_sources():
    assert cuda.KERNELS_CU in SOURCES


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(path, arch):
    if path == cuda.KERNELS_CU:
        ok, log, lowered = kernels_built(arch)
    else:
        ok, log, lowered = compile_source(path.read_text(), path.name, arch, [])
    assert ok, f"{path.name} does not compile for {arch}:\n{log}"
    missing = [e for e, mangled in lowered.items() if not mangled]
    assert not missing, f"kernel instances not found: {missing}"


def test_the_build_check_catches_errors():
    """The check itself must be able to fail: INFINITY is undefined under NVRTC."""
    ok, log, _ = compile_source("__global__ void k(float* x) { x[0] = INFINITY; }", "bad.cu",
                                "sm_90", [])
    assert not ok and "INFINITY" in log


def test_reading_an_empty_log_leaves_pythons_shared_bytes_alone():
    """A clean compile's log is empty; reading it must not write into an object Python shares."""
    ok, log, _ = compile_source("__global__ void k(float* x) { x[0] = 1.0f; }", "clean.cu",
                                "sm_90", [])
    assert ok and log == ""
    assert bytes([32])[0] == 32 and f"{ok} {ok}" == "True True"


def test_host_constants_match_the_sources():
    """What cuda/launch.py launches with is what kernels.cu was written for."""
    import re

    from cuda.bindings import runtime

    from gpunn.backends import cupy_backend
    from gpunn.backends.cuda import launch

    threads = re.search(r"#define ONE_KERNEL_THREADS (\d+)", cuda.source())
    assert threads and int(threads.group(1)) == launch.ONE_KERNEL_THREADS
    threads = re.search(r"#define COLUMN_SUM_THREADS (\d+)", cuda.source())
    assert threads and int(threads.group(1)) == launch.COLUMN_SUM_THREADS
    for name in ("QUAD_COLUMNS", "QUAD_ROWS", "TRANSPOSE_TILE", "TRANSPOSE_ROWS"):
        quad = re.search(rf"#define {name} (\d+)", cuda.source())
        assert quad and int(quad.group(1)) == getattr(launch, name)
    folded = re.search(r"#define FOLDED_INPUTS (\d+)", cuda.source())
    assert folded and int(folded.group(1)) == launch.FOLDED_INPUTS
    narrow = re.search(r"#define NARROW_OUTPUTS (\d+)", cuda.source())
    assert narrow and int(narrow.group(1)) == launch.NARROW_OUTPUTS
    tiles = re.findall(r"if \(k > (\d+)\) narrow_weight_grads_tiles<(\d+)>", cuda.source())
    assert [launch.narrow_tile(int(k) + 1) for k, _ in tiles] == [int(t) for _, t in tiles]
    assert cupy_backend.CUDA_DEV_ATTR_MAX_SHARED_OPTIN == int(
        runtime.cudaDeviceAttr.cudaDevAttrMaxSharedMemoryPerBlockOptin)


def test_the_schedule_slots_reach_the_kernels_only_through_the_python_names():
    """kernels.cu reads the schedule by the names schedule.py defines (no bare indices), and
    does not build without them."""
    import re

    from gpunn.backends import schedule

    text = re.sub(r"//[^\n]*", "", cuda.source())
    assert not re.search(r"sched(ule)?\[\s*\d", text), "a bare index into the schedule"
    used = set(re.findall(r"SCHEDULE_([A-Z_0-9]+)", text)) - {"SIZE"}
    assert used <= set(schedule.SLOTS) and {"LR_T", "ITERATIONS"} <= used
    assert "-DSCHEDULE_LR_T=5" in cuda.NVRTC_OPTIONS and "-DRULE_ADAM=3" in cuda.NVRTC_OPTIONS
    ok, log, _ = compile_source(cuda.source(), "kernels.cu", "sm_90", [], options=("-std=c++17",))
    assert not ok and "the schedule's slots" in log


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_one_kernel_trainer_builds_with_its_phase_stamps(arch):
    """benchmarks/one_kernel_phases.py builds kernels.cu with -DONE_KERNEL_PHASES and names one
    phase per PHASE_DONE marker of the trainer: the markers are 0, 1, ... in order, as many as
    ONE_KERNEL_PHASE_COUNT, and as the script's names."""
    import importlib.util
    import re

    path = Path(__file__).parents[3] / "benchmarks" / "one_kernel_phases.py"
    spec = importlib.util.spec_from_file_location("one_kernel_phases", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = cuda.source()
    markers = [int(p) for p in re.findall(r"^\s*PHASE_DONE\((\d+)\)\s*$", text, re.M)]
    count = re.search(r"#define ONE_KERNEL_PHASE_COUNT (\d+)", text)
    assert markers == list(range(len(script.PHASES)))
    assert count and int(count.group(1)) == len(script.PHASES)
    assert script.phase_names(text) == script.PHASES
    older = text.replace(count.group(0), "#define ONE_KERNEL_PHASE_COUNT 9")  # db2, db1 apart
    assert script.phase_names(older) == tuple(f"phase {p}" for p in range(9))
    assert script.phase_names(re.sub(r"PHASE_DONE\(\d+\)", "", text)) == ()
    # the trainer built for no sizes and for the book's, by warps or not, as the script times it
    sized = f"train_in_one_kernel<float, {', '.join(map(str, script.BOOK_SIZES))}>"
    for _, _, options in script.VARIANTS:
        ok, log, lowered = compile_source(text, "kernels.cu", arch, ["train_in_one_kernel<float>", sized],
                                          options=(*cuda.NVRTC_OPTIONS, script.STAMPS, *options))
        assert ok, log
        assert lowered["train_in_one_kernel<float>"] and lowered[sized]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_largest_blocks_fit_the_register_file(arch):
    """A block launches only if its threads' registers fit one SM's 65,536: the kernels launched
    with 1024 threads (the column sums, the narrow layer's gradient) may use 64 a thread, the
    one-kernel trainer's 512 threads 128, the narrow products' 256 threads 256. ptxas picks
    more than that where nothing bounds it (relu_backward_column_sum took 80), and then the
    launch fails on the device alone; its report (-v) says here."""
    import re

    blocks = launched_blocks()
    expressions = [f"{name}<{t}>" for name in blocks for t in ("float", "double")] + BOOK_TRAINERS
    ok, log, lowered = kernels_built(arch)
    assert ok, log
    used = dict(re.findall(r"Function properties for (\w+)\n.*?\n.*?Used (\d+) registers", log))
    for expr in expressions:
        registers = int(used[lowered[expr].decode()])
        assert registers * blocks[expr.split("<")[0]] <= 65536, \
            f"{expr} uses {registers} registers a thread: a block of {blocks[expr.split('<')[0]]} " \
            f"would not launch"
