"""Does some test need each __syncthreads() of kernels.cu? Removes each in turn, runs the tests
that run kernels.cu on the CPU (harness.cpp) against that copy, and lists the barriers whose
removal no test noticed: a race a GPU could run into and the tests would miss. On demand, not in
CI (`make mutate-barriers`; a minute or two a barrier on 2 cores): kernels.cu's mutmut.

    python tests/cuda_on_cpu/barrier_mutants.py [--jobs N] [--lines 182,219]

The copy reaches the harness through GPUNN_HARNESS_KERNELS (emulator.build's kernels.cu), so
only the kernels run on the CPU change; exit status 1 if any barrier survives.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS_CU = ROOT / "gpunn" / "backends" / "cuda" / "kernels.cu"
ENV = "GPUNN_HARNESS_KERNELS"
#: The tests that run kernels.cu on the CPU (the NVRTC build checks read the real file).
TESTS = ["tests/backends/cuda", "tests/test_bf16.py", "tests/training",
         "--ignore=tests/backends/cuda/test_cuda_sources.py"]
BARRIER = "__syncthreads();"


def barriers(source: str) -> list[int]:
    """The lines (from 1) whose code, comments aside, calls __syncthreads()."""
    return [number for number, line in enumerate(source.splitlines(), 1)
            if BARRIER in line.split("//")[0] and not re.match(r"\s*#", line)]


def without(source: str, line: int) -> str:
    """``source`` with the barrier on ``line`` taken out (the line kept, so numbers stay)."""
    lines = source.splitlines(keepends=True)
    assert BARRIER in lines[line - 1], (line, lines[line - 1])
    lines[line - 1] = lines[line - 1].replace(BARRIER, "/* barrier removed */", 1)
    return "".join(lines)


def run(line: int, source: str) -> tuple[int, str | None]:
    """(line, the first test that failed without its barrier, or None if every test passed)."""
    with tempfile.TemporaryDirectory(prefix=f"barrier-{line}-") as folder:
        copy = Path(folder) / "kernels.cu"
        copy.write_text(without(source, line))
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                 *TESTS], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, ENV: str(copy)})
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
    if result.returncode == 0:
        return line, None
    return line, failed.group(1) if failed else f"pytest exit status {result.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="mutants run at once (default: one a core)")
    parser.add_argument("--lines", default="", help="only these lines of kernels.cu, e.g. 182,219")
    args = parser.parse_args(argv)
    source = KERNELS_CU.read_text()
    lines = barriers(source)
    if args.lines:
        wanted = {int(n) for n in args.lines.split(",")}
        if not wanted <= set(lines):
            parser.error(f"--lines: no __syncthreads() on line(s) {sorted(wanted - set(lines))}")
        lines = [n for n in lines if n in wanted]
    survivors = 0
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for line, failed in pool.map(lambda n: run(n, source), lines):
            survivors += failed is None
            print(f"kernels.cu:{line}: " + (f"caught by {failed}" if failed else "SURVIVED: no test failed"),
                  flush=True)
    print(f"{len(lines) - survivors} of {len(lines)} barriers needed by a test")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
