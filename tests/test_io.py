"""Saving, loading, checkpoints and exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gpunn as nn


def model_with_dropout(seed=0, backend="numpy"):
    nn.set_seed(seed)
    model = nn.Sequential([nn.Dense(2, 32, init="he"), nn.ReLU(), nn.Dropout(0.1),
                           nn.Dense(32, 3, weight_regularizer_l2=1e-4)])
    return model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01, decay=1e-3), backend=backend)


@pytest.fixture
def data():
    return nn.datasets.spiral_data(samples=40, classes=3, seed=0)


def test_round_trip_gives_identical_predictions(backend, data, tmp_path):
    X, y = data
    model = model_with_dropout(backend=backend)
    model.fit(X, y, epochs=5, batch_size=16, seed=1, verbose=0)
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = nn.load(path, backend=backend)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.optimizer.iterations == model.optimizer.iterations == 40
    assert repr(loaded) == repr(model)
    for a, b in zip(loaded.get_params(), model.get_params()):
        np.testing.assert_array_equal(a, b)
    for name in model.optimizer.state:
        np.testing.assert_array_equal(loaded.backend.to_numpy(loaded.optimizer.state[name]),
                                      model.backend.to_numpy(model.optimizer.state[name]))
    # Training on continues identically from the saved optimizer state (dropout's generator is
    # training state, kept by checkpoints, not by a plain save: align it here).
    loaded.layers[2].rng.bit_generator.state = model.layers[2].rng.bit_generator.state
    model.train_step(X, y)
    loaded.train_step(X, y)
    for a, b in zip(loaded.get_params(), model.get_params()):
        np.testing.assert_array_equal(a, b)


def test_resumed_fit_equals_an_uninterrupted_one_exactly(data, tmp_path):
    X, y = data
    whole = model_with_dropout()
    h_whole = whole.fit(X, y, epochs=8, batch_size=16, seed=5, verbose=0)
    ck = tmp_path / "ck.safetensors"
    first = model_with_dropout()
    first.fit(X, y, epochs=3, batch_size=16, seed=5, verbose=0, checkpoint=ck)
    again = model_with_dropout(seed=99)  # other initial weights: all must come from the file
    h_again = again.fit(X, y, epochs=8, batch_size=16, seed=5, verbose=0, resume_from=ck)
    for a, b in zip(whole.get_params(), again.get_params()):
        np.testing.assert_array_equal(a, b)
    assert h_again.history == h_whole.history and h_again.epoch == list(range(1, 9))
    assert again.optimizer.iterations == whole.optimizer.iterations


KILL_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import gpunn as nn
    nn.set_seed(1)
    model = nn.Sequential([nn.Dense(1000, 1000), nn.ReLU(), nn.Dense(1000, 10)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend="numpy")
    print("ready", flush=True)
    while True:
        model.params += 1  # each save differs
        model.save(sys.argv[1])
""")


def test_sigkill_in_the_middle_of_save_leaves_the_previous_file_loadable(tmp_path):
    path = tmp_path / "model.safetensors"
    nn.set_seed(1)
    first = nn.Sequential([nn.Dense(1000, 1000), nn.ReLU(), nn.Dense(1000, 10)])
    first.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend="numpy")
    first.save(path)
    rng = np.random.default_rng(0)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))  # each save of ~36 MB takes tens of ms
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        loaded = nn.load(path, backend="numpy")  # whole: the old file or a complete new one
        assert loaded.params.shape == first.params.shape
        steps = loaded.params - first.params
        k = round(float(steps[0]))
        # every value moved by the same whole number of "+= 1" saves: not a torn write
        np.testing.assert_allclose(steps, k, atol=1e-3)
    leftovers = [p for p in tmp_path.iterdir() if p.name != path.name]
    assert all(p.name.startswith(".model.safetensors.") for p in leftovers)


def test_bad_files_get_clear_errors(tmp_path, data):
    X, y = data
    model = model_with_dropout()
    good = tmp_path / "good.safetensors"
    model.save(good)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        nn.load(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="is not a valid gpunn model file"):
        nn.load(truncated)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(ValueError, match="is not a valid gpunn model file"):
        nn.load(junk)
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="without gpunn's metadata"):
        nn.load(foreign)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a valid gpunn model file"):
        nn.load(empty)


def test_resume_checks_the_architecture_and_the_file_kind(tmp_path, data):
    X, y = data
    ck, plain = tmp_path / "ck.safetensors", tmp_path / "plain.safetensors"
    model = model_with_dropout()
    model.fit(X, y, epochs=1, verbose=0, checkpoint=ck)
    model.save(plain)
    other = nn.Sequential([nn.Dense(2, 16), nn.ReLU(), nn.Dropout(0.1), nn.Dense(16, 3)])
    other.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01), backend="numpy")
    before = other.get_params()
    with pytest.raises(ValueError, match=r"does not match this model at layer 0"):
        other.fit(X, y, epochs=2, verbose=0, resume_from=ck)
    assert all(np.array_equal(a, b) for a, b in zip(before, other.get_params()))
    with pytest.raises(ValueError, match="not a checkpoint written by fit"):
        model.fit(X, y, epochs=2, verbose=0, resume_from=plain)
    with pytest.raises(ValueError, match=r"params\[0\] \(weights of Dense layer 0"):
        other.set_params(model.get_params())


def test_save_needs_a_compiled_model_and_an_existing_folder(tmp_path):
    with pytest.raises(RuntimeError, match="compile"):
        nn.Sequential([nn.Dense(2, 3)]).save(tmp_path / "m.safetensors")
    model = model_with_dropout()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save(tmp_path / "no" / "such" / "m.safetensors")
