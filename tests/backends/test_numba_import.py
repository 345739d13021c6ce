"""gpunn/backends/numba_import.py: numba is imported when compiled CPU code is first wanted, not by
``import gpunn``; where its import fails, every NumPy path still runs, with the same numbers
where the compiled passes would have given the same bits, and says why."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

NUMBA_INSTALLED = importlib.util.find_spec("numba") is not None

#: In a fresh process (argv[1] "blocked": numba's import fails there, as it does for a numba too
#: old for the NumPy installed), one line each: whether numba is imported after import gpunn;
#: after small fits (three layers, or Dense -> ReLU -> Dense too wide for the one-kernel trainer;
#: far too few elements to start the passes); after a fit with 300 x 300 arrays, which the
#: passes take, but too short to start them (passes.NUMPY_FIRST); the
#: parameters' digest after that fit again with the passes started (passes.start_now()); whether
#: numba is imported then; the path the book's network takes; jit.why_not().
CHILD = """
import hashlib, sys
if sys.argv[1] == "blocked":
    sys.modules["numba"] = None
elif sys.argv[1] == "broken":  # a numba package whose import raises OSError, found first
    sys.path.insert(0, sys.argv[2])
import numpy as np
import gpunn as nn
from gpunn.backends import jit, passes
from gpunn.training import steps

print(sys.modules.get("numba") is not None)
X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)


def fit(sizes, batch_size):
    nn.set_seed(0)
    layers = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Dense(n_in, n_out), nn.ReLU()]
    model = nn.Sequential(layers[:-1])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend="numpy")
    inputs = np.tile(X, (1, sizes[0] // 2))
    model.fit(inputs, y, epochs=3, batch_size=batch_size, seed=0, verbose=0)
    model.predict(inputs)
    return model


fit((2, 16, 16, 3), 32)
fit((20, 16, 3), 32)  # the trainer's shape, but too wide for it
print(sys.modules.get("numba") is not None)
fit((2, 300, 300, 3), None)  # 300 x 300 activations, 91,503 parameters: 3 epochs are too few
print(sys.modules.get("numba") is not None)
passes.start_now()
large = fit((2, 300, 300, 3), None)
digest = hashlib.sha256()
for layer in large.network.dense_layers:
    digest.update(layer.weights.tobytes())
    digest.update(layer.biases.tobytes())
print(digest.hexdigest())
print(sys.modules.get("numba") is not None)
print(steps.choose(fit((2, 64, 3), None).network, 300))
print(jit.why_not())
"""


def child(mode: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, *args], capture_output=True,
                          text=True, timeout=240, env={**os.environ, "GPUNN_BACKEND": ""})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def as_installed() -> list[str]:
    return child("as-installed")


def test_numba_is_imported_by_the_first_compiled_code_not_by_import_gpunn(as_installed):
    after_import, after_small, after_short, _, after_large, book_path, why_not = as_installed
    assert (after_import, after_small, after_short) == ("False", "False", "False")
    if NUMBA_INSTALLED:
        assert (after_large, book_path, why_not) == ("True", "one-kernel", "None")
    else:
        assert (after_large, book_path) == ("False", "eager")


@pytest.mark.parametrize("how", ["blocked", "broken"])
def test_where_numba_does_not_import_the_numpy_steps_run_and_say_why(as_installed, how,
                                                                     tmp_path):
    """Blocked: ImportError, as for numba missing or too old for this NumPy. Broken: OSError, as
    where llvmlite's library will not load."""
    if how == "broken":
        (tmp_path / "numba").mkdir()
        (tmp_path / "numba" / "__init__.py").write_text(
            'raise OSError("libllvmlite.so: cannot open shared object file")\n')
    after_import, after_small, after_short, digest, after_large, book_path, why_not = \
        child(how, str(tmp_path))
    assert (after_import, after_small, after_short, after_large, book_path) == \
        ("False", "False", "False", "False", "eager")
    assert why_not.startswith('needs numba (pip install "gpunn[jit]"; '), why_not
    assert how != "broken" or why_not.endswith("cannot open shared object file)"), why_not
    # The compiled passes give the same bits as NumPy's calls (test_passes.py), so the run does.
    assert digest == as_installed[3]
