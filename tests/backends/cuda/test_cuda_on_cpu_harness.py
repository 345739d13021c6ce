"""tests/cuda_on_cpu/harness.cpp itself: a block's threads are fibers that take turns at barriers.
What the kernel tests rely on: a barrier holds every thread until all have arrived; threads that
have returned do not hold it up; a missing barrier shows (a read before the write it needed, the
turns going in a new order each round; or after a write over it, one warp lagging behind the
others as far as the barriers allow); each block starts with shared memory of its own; and
threads that wait for one another forever end the launch with an error instead of hanging the
test run. The kernels are tests/cuda_on_cpu/harness_checks.cu. Then barrier_mutants.py (`make
mutate-barriers`), which takes kernels.cu's barriers out one at a time."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from cuda_on_cpu.emulator import DEADLOCK, argument_pointers, build


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    lib = build(tmp_path_factory.mktemp("harness_checks"), checks=True)
    if isinstance(lib, str):
        pytest.skip(lib)
    return lib


def launch(lib, name: str, threads: int, *args, shared: int = 0, blocks: int = 1) -> int:
    """``blocks`` of ``threads``; ``args``: int32 arrays (passed by pointer) and Python ints."""
    argv = argument_pointers([ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray)
                              else ctypes.c_int(a) for a in args])
    fn = getattr(lib, f"{name}_plain")
    fn.restype = ctypes.c_longlong
    return fn(ctypes.c_uint(blocks), ctypes.c_uint(threads), ctypes.c_uint(1), ctypes.c_uint(shared),
              argv)


@pytest.mark.parametrize("threads", [64, 96])
def test_a_barrier_holds_every_thread_until_all_have_written(checks, threads):
    for _ in range(3):  # each in its own order of turns
        out = np.full(threads, -7, dtype=np.int32)
        assert launch(checks, "read_neighbour", threads, out, 1, shared=4 * threads) == 0
        np.testing.assert_array_equal(out, (np.arange(threads) + 1) % threads)


def test_a_missing_barrier_shows(checks):
    """With no barrier, some thread reads its neighbour's slot before it is written: poison (-1,
    the shared memory's NaN bytes), in every launch, since in no order of turns does each thread
    come after the one whose slot it reads (they form a ring); and which thread, differs."""
    threads, stale = 64, set()
    for _ in range(4):
        out = np.full(threads, -7, dtype=np.int32)
        assert launch(checks, "read_neighbour", threads, out, 0, shared=4 * threads) == 0
        written = out != -1
        assert not written.all()
        np.testing.assert_array_equal(out[written], ((np.arange(threads) + 1) % threads)[written])
        stale.add(tuple(np.flatnonzero(~written)))
    assert len(stale) > 1  # the turns go in a new order each launch


def test_a_missing_barrier_shows_when_one_warp_lags_behind(checks):
    """With no barrier between the reads and thread 0's write over what they read, a thread of
    the late warp (not warp 0) reads what was written over: 2, not 1. Four warps: in some launch
    of several the late warp is not warp 0. With the barrier, every thread reads 1."""
    threads, late_reads = 128, []
    for synced in (1, 0):
        for _ in range(6):
            out = np.full(threads, -7, dtype=np.int32)
            assert launch(checks, "read_before_overwrite", threads, out, synced, shared=4) == 0
            assert set(out) <= {1, 2}
            late_reads.append((synced, np.count_nonzero(out == 2)))
    assert all(n == 0 for synced, n in late_reads if synced)
    assert any(n > 0 for synced, n in late_reads if not synced), late_reads


def test_each_block_starts_with_shared_memory_of_its_own(checks):
    """Later blocks do not see what block 0 wrote in shared memory: the poison (-1)."""
    out = np.full(3, -7, dtype=np.int32)
    assert launch(checks, "read_the_block_befores_shared", 64, out, shared=4 * 64, blocks=3) == 0
    np.testing.assert_array_equal(out, [7, -1, -1])


@pytest.mark.parametrize("n", [0, 10, 34, 64])  # even: no shuffle with a lane that returned
def test_threads_that_have_returned_do_not_hold_up_a_barrier(checks, n):
    out = np.full(64, -7, dtype=np.int32)
    assert launch(checks, "return_early", 64, out, n) == 0
    i = np.arange(64)
    np.testing.assert_array_equal(out, np.where(i < n, i + (i ^ 1) + 1, -7))


def test_threads_waiting_for_each_other_forever_end_the_launch_with_an_error(checks):
    out = np.zeros(64, dtype=np.int32)
    assert launch(checks, "wait_at_two_barriers", 64, out) == DEADLOCK
    # The next launch starts afresh.
    out = np.full(64, -7, dtype=np.int32)
    assert launch(checks, "return_early", 64, out, 64) == 0
    np.testing.assert_array_equal(out, np.arange(64) + (np.arange(64) ^ 1) + 1)


def test_launches_from_several_python_threads_take_turns(checks):
    """ctypes lets go of the GIL during a launch: launches from threads at once run one at a
    time, each right."""
    from concurrent.futures import ThreadPoolExecutor

    def launches(threads: int) -> bool:
        for _ in range(20):
            out = np.full(threads, -7, dtype=np.int32)
            if launch(checks, "read_neighbour", threads, out, 1, shared=4 * threads) != 0:
                return False
            if not np.array_equal(out, (np.arange(threads) + 1) % threads):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(launches, [32, 64, 96, 128]))


# ---- barrier_mutants.py: kernels.cu's __syncthreads() taken out one at a time -----------------

def test_the_barrier_mutants_are_each_barrier_of_kernels_cu_taken_out_alone():
    from cuda_on_cpu import barrier_mutants as mutants

    source = mutants.KERNELS_CU.read_text()
    lines = mutants.barriers(source)
    code = [line.split("//")[0] for line in source.splitlines()]
    assert len(lines) == sum(c.count(mutants.BARRIER) for c in code) > 10
    for line in lines:
        mutant = mutants.without(source, line).splitlines()
        changed = [i + 1 for i, (a, b) in enumerate(zip(mutant, source.splitlines())) if a != b]
        assert changed == [line] and mutants.BARRIER not in mutant[line - 1].split("//")[0]


def test_a_barrier_mutant_runs_the_tests_against_its_own_kernels(monkeypatch):
    """End to end on one barrier (the transpose's, between a tile's loads and its stores), its
    tests only: taken out, they fail; the NVRTC checks and the GPU are not involved."""
    from cuda_on_cpu import barrier_mutants as mutants

    source = mutants.KERNELS_CU.read_text()
    line = next(n for n in mutants.barriers(source)
                if "transpose(" in "".join(source.splitlines()[n - 15:n]))
    monkeypatch.setattr(mutants, "TESTS", ["tests/backends/cuda/test_kernels.py", "-k",
                                           "test_transpose_writes_every_value and cpu"])
    caught_at, failed = mutants.run(line, source)
    assert caught_at == line and failed and "test_transpose_writes_every_value" in failed


def test_the_harness_takes_the_kernels_file_it_is_given(tmp_path, monkeypatch):
    from cuda_on_cpu.emulator import KERNELS_ENV

    broken = tmp_path / "kernels.cu"
    broken.write_text("this is not C++\n")
    monkeypatch.setenv(KERNELS_ENV, str(broken))
    with pytest.raises(RuntimeError, match="did not build"):
        build(tmp_path)
    monkeypatch.setenv(KERNELS_ENV, str(tmp_path / "other.cu"))
    with pytest.raises(ValueError, match="kernels.cu"):
        build(tmp_path)
