"""The house's rules hold, and the checks that hold them can fail: imports point down only
(import-linter's contracts in pyproject.toml), no module reaches another's private names (ruff's
SLF001), no function too tangled (C901). Each rule is also broken on purpose in a copy of the
package, to show its check catches it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: it comes with the test extra (pip install -e '.[test]')")
    return path


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def copy(tmp_path):
    """The package and its configuration, copied: break it at will."""
    shutil.copytree(ROOT / "gpunn", tmp_path / "gpunn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def insert_import(source: str, line: str) -> str:
    """``source`` with ``line`` (an import) right after its ``from __future__`` import."""
    future = "from __future__ import annotations\n"
    assert future in source
    return source.replace(future, f"{future}{line}  # noqa: F401\n", 1)


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    return run([tool("lint-imports"), "--no-logo", "--no-cache"], folder)


def test_the_import_contracts_hold(copy):
    result = lint_imports(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(copy):
    layers = copy / "gpunn" / "layers.py"
    layers.write_text(insert_import(layers.read_text(), "from .network import Network"))
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "gpunn.layers is not allowed to import gpunn.network" in result.stdout


def test_importing_the_package_face_from_below_breaks_the_contract(copy):
    steps = copy / "gpunn" / "training" / "steps.py"
    steps.write_text(insert_import(steps.read_text(), "import gpunn"))
    result = lint_imports(copy)
    assert result.returncode != 0 and "gpunn.training.steps -> gpunn (" in result.stdout


def ruff(folder: Path, *paths: str) -> subprocess.CompletedProcess:
    return run([tool("ruff"), "check", "--no-cache", "--output-format", "concise", *paths], folder)


def test_no_private_access_and_no_tangles_in_the_package():
    result = ruff(ROOT, "--select", "SLF001,C901", "gpunn", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout


def test_private_access_and_a_tangled_function_are_caught(copy):
    io = copy / "gpunn" / "io.py"
    io.write_text(io.read_text() + '''

def private_peek(network: Network) -> Any:
    return network._private


def tangled(a: int) -> int:
''' + "".join(f"    if a == {i}:\n        return {i}\n" for i in range(14)) + "    return -1\n")
    result = ruff(copy, "gpunn")
    assert result.returncode != 0
    assert "SLF001 Private member accessed: `_private`" in result.stdout
    assert "C901 `tangled` is too complex (15 > 12)" in result.stdout
