"""The README's benchmark table is one run's: benchmarks/readme_table.py rewrites it from
benchmarks/cpu-bench.json, and the two agree."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
readme_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_table)


def test_the_readme_table_is_the_committed_runs():
    doc = json.loads((ROOT / "benchmarks" / "cpu-bench.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert readme_table.rewrite(readme, doc) == readme, \
        "run: python benchmarks/readme_table.py benchmarks/cpu-bench.json"
    jsonschema = pytest.importorskip("jsonschema")
    from gpunn.bench import SCHEMA

    jsonschema.validate(doc, SCHEMA)


def test_rewrite_replaces_only_the_block():
    doc = json.loads((ROOT / "benchmarks" / "cpu-bench.json").read_text())
    text = f"before\n{readme_table.BEGIN}\nold table\n{readme_table.END}\nafter\n"
    new = readme_table.rewrite(text, doc)
    date = doc["machine"]["date"]
    assert new.startswith(f"before\n{readme_table.BEGIN}\nOne `gpunn bench` run, {date}, on ")
    assert new.endswith(f"{readme_table.END}\nafter\n") and "| small, per step | " in new
    with pytest.raises(ValueError, match="no .* block to rewrite"):
        readme_table.rewrite("no markers here", doc)


def test_the_table_names_numpys_blas_where_another_is_listed_first():
    doc = json.loads((ROOT / "benchmarks" / "cpu-bench.json").read_text())
    doc["machine"]["blas"] = [
        {"internal_api": "openblas", "version": "0.3.30", "num_threads": 2,
         "architecture": "SkylakeX", "numpy": False},
        {"internal_api": "openblas", "version": "0.3.31.188.0", "num_threads": 2,
         "architecture": "SkylakeX", "numpy": True}]
    text = readme_table.machine_text(doc)
    assert "openblas 0.3.31.188.0 with 2 threads, SkylakeX kernel" in text and "0.3.30" not in text
