"""Every code block in the README runs: Python blocks are executed, and `gpunn` command lines in
shell blocks are run. The `make` lines are the ones CI itself runs, so they are not rerun here."""

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


@pytest.mark.parametrize("code", [c for lang, c in BLOCKS if lang == "python"])
def test_python_block_runs(code, tmp_path):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def _gpunn_lines():
    for lang, code in BLOCKS:
        if lang == "bash":
            for line in code.splitlines():
                line = line.split("#")[0].strip()
                if line.startswith("gpunn "):
                    yield line


@pytest.mark.parametrize("line", list(_gpunn_lines()))
def test_cli_line_runs(line, tmp_path):
    args = shlex.split(line)[1:]
    result = subprocess.run([sys.executable, "-m", "gpunn", *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
