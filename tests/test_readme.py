"""Every code block in the README runs: Python blocks are executed, and `gpunn` command lines in
shell blocks are run, in README order in one folder (later blocks use files earlier ones wrote).
The `make` lines are the ones CI itself runs, so they are not rerun here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_two_commands():
    shell = "".join(code for lang, code in BLOCKS if lang == "bash")
    assert "make demo" in shell and "make test" in shell


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def _steps():
    """("python", code) and ("gpunn", line) in README order."""
    for lang, code in BLOCKS:
        if lang == "python":
            yield "python", code
        elif lang == "bash":
            for line in code.splitlines():
                line = line.split("#")[0].strip()
                if line.startswith("gpunn "):
                    yield "gpunn", line


@pytest.mark.parametrize("kind, code", list(_steps()), ids=lambda v: v[:40] if isinstance(v, str) else v)
def test_readme_step_runs(kind, code, folder):
    command = [sys.executable, "-c", code] if kind == "python" else \
        [sys.executable, "-m", "gpunn", *shlex.split(code)[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=folder)
    assert result.returncode == 0, result.stderr
