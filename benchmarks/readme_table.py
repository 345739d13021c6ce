"""Rewrite the CPU benchmark table in README.md from one ``gpunn bench --json`` file, so the
README's figures are always one run's, with its machine block:

    python benchmarks/readme_table.py benchmarks/cpu-bench.json [README.md]

The table sits between the two ``bench-table`` comment lines in the README; everything else is
left as it is. tests/bench/test_readme_table.py checks that the README matches the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench-table: written by benchmarks/readme_table.py; do not edit by hand -->"
END = "<!-- bench-table end -->"
COLUMNS = [("gpunn-numpy-one-kernel", "gpunn, compiled trainer (the default with numba)"),
           ("gpunn-numpy", "gpunn, NumPy steps"),
           ("numpy-book", "NumPy port of the book"), ("pytorch", "PyTorch"), ("jax", "JAX jit"),
           ("step-gemms", "the step's GEMMs alone (a floor)")]
#: The ratio columns: (gpunn row, peer, heading).
RATIOS = [("gpunn-numpy-one-kernel", "pytorch", "compiled trainer vs PyTorch"),
          ("gpunn-numpy-one-kernel", "jax", "compiled trainer vs JAX"),
          ("gpunn-numpy", "pytorch", "NumPy steps vs PyTorch"),
          ("gpunn-numpy", "jax", "NumPy steps vs JAX")]
ROWS = [("small", "small, per step"), ("medium", "medium, per step"),
        ("book", "book run, 10,001 epochs")]


def _time(row: dict[str, Any]) -> str:
    if row["workload"] == "book":
        return f"{row['step_ms'] / 1e3:.2f} s"
    text = f"{row['step_ms']:.3f} ms" if row["step_ms"] < 10 else f"{row['step_ms']:.1f} ms"
    if row.get("ceiling_fraction") and row["workload"] == "medium" \
            and row["impl"] in ("gpunn-numpy", "step-gemms"):
        text += f" ({100 * row['ceiling_fraction']:.1f}% of the GEMM ceiling)"
    return text


def _ratio(gpunn: dict[str, Any] | None, peer: str) -> str:
    value = None if gpunn is None else gpunn.get("speedup_vs", {}).get(peer)
    if value is None:
        return ""
    return f"{'~' if peer in gpunn.get('within_noise', []) else ''}{value:.2f}x"


def machine_text(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    blas = next((b for b in m["blas"] if b.get("numpy")), None) or \
        next((b for b in m["blas"] if b.get("internal_api") not in (None, "openmp")), {})
    kernel = f", {blas['architecture']} kernel" if blas.get("architecture") else ""
    versions = ", ".join(f"{'PyTorch' if k == 'torch' else k} {v}" for k, v in m["versions"].items())
    ceiling = m["gemm_ceiling"].get("cpu-fp32")
    return (f"{m['cpu']} ({m['cpu_cores']} cores), {blas.get('internal_api', 'BLAS')} "
            f"{blas.get('version', '')} with {blas.get('num_threads', '?')} threads{kernel}; "
            f"Python {m['python']}, {versions}; float32 GEMM ceiling "
            f"{ceiling:.3f} TFLOP/s on 2048³" if ceiling else "")


def table(doc: dict[str, Any]) -> str:
    """The README's table (and the line that says where its numbers come from)."""
    cpu = [r for r in doc["results"] if r["device"] == "cpu" and r["precision"] == "fp32"]
    when = f", {doc['machine']['date']}" if doc["machine"].get("date") else ""
    lines = [f"One `gpunn bench` run{when}, on {machine_text(doc)}:", "",
             "| workload | " + " | ".join(name for _, name in COLUMNS) + " | "
             + " | ".join(heading for _, _, heading in RATIOS) + " |",
             "|---" * (len(COLUMNS) + len(RATIOS) + 1) + "|"]
    for workload, label in ROWS:
        rows = {r["impl"]: r for r in cpu if r["workload"] == workload}
        if "gpunn-numpy" not in rows:
            continue
        cells = [_time(rows[impl]) if impl in rows else "" for impl, _ in COLUMNS]
        ratios = [_ratio(rows.get(impl), peer) for impl, peer, _ in RATIOS]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "~: within run-to-run noise (the middle halves of the two contenders' repeats "
                  "overlap), so that ratio does not rank them."]
    return "\n".join(lines)


def rewrite(readme: str, doc: dict[str, Any]) -> str:
    """``readme`` with the text between the markers replaced by ``table(doc)``."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"the README has no {BEGIN!r} ... {END!r} block to rewrite")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(doc)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    readme = Path(argv[1] if len(argv) > 1 else "README.md")
    readme.write_text(rewrite(readme.read_text(), doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
