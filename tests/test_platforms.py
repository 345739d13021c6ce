"""What gpunn asks of the os module, Windows has too: where a POSIX-only function is missing,
gpunn goes without it. Windows cannot run here, so a child process takes those functions away
before importing gpunn (Windows' os has no fork, register_at_fork or sysconf, and no fchmod before
Python 3.13) and then imports, trains with a checkpoint every epoch (each save replacing the last
file), saves over a file and loads it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
