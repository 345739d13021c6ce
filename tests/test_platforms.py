"""What gpunn asks of the os module, Windows has too: where a POSIX-only function is missing,
gpunn goes without it. Windows cannot run here, so a child process takes those functions away
before importing gpunn (Windows' os has no fork, register_at_fork or sysconf, and no fchmod before
Python 3.13) and then imports, trains with a checkpoint every epoch (each save replacing the last
file), saves over a file and loads it. The CPU's data budget is read from what each system's
os.sysconf says, a stand-in here."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

from gpunn.backends.numpy_backend import NumpyBackend

CHILD = textwrap.dedent("""
    import os
    import sys
    for name in ("fork", "register_at_fork", "fchmod", "sysconf"):
        if hasattr(os, name):
            delattr(os, name)
    import numpy as np
    import gpunn as nn
    folder = sys.argv[1]
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="numpy")
    model.fit(X, y, epochs=3, batch_size=16, verbose=0, checkpoint=f"{folder}/ck.safetensors",
              checkpoint_every=1)
    model.save(f"{folder}/m.safetensors")
    os.chmod(f"{folder}/m.safetensors", 0o640)
    model.save(f"{folder}/m.safetensors")  # a replaced file keeps its mode (os.chmod, here)
    assert os.stat(f"{folder}/m.safetensors").st_mode & 0o777 == 0o640
    loaded = nn.load(f"{folder}/m.safetensors", backend="numpy")
    assert np.array_equal(loaded.predict(X), model.predict(X))
    assert nn.load(f"{folder}/ck.safetensors").optimizer.iterations == 3 * 4
    print("ok")
""")


def test_gpunn_imports_trains_and_saves_without_posix_only_os_functions(tmp_path):
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_the_cpus_data_budget_comes_from_what_the_system_says(monkeypatch):
    """Half the available RAM (Linux); half of all of it where only that is said (macOS has no
    SC_AVPHYS_PAGES, and knows the page size only as SC_PAGESIZE); no budget where neither is
    (Windows has no os.sysconf)."""
    monkeypatch.delenv("GPUNN_DATA_BUDGET", raising=False)
    said = {"SC_AVPHYS_PAGES": 1000, "SC_PHYS_PAGES": 4000, "SC_PAGESIZE": 4096}

    def sysconf(name):
        if name not in said:
            raise ValueError("unrecognized configuration name")
        return said[name]

    monkeypatch.setattr(os, "sysconf", sysconf)
    assert NumpyBackend().data_budget() == 1000 * 4096 / 2
    del said["SC_AVPHYS_PAGES"]
    assert NumpyBackend().data_budget() == 4000 * 4096 / 2
    monkeypatch.delattr(os, "sysconf")
    assert NumpyBackend().data_budget() == math.inf
