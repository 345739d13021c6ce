"""Saving, loading, checkpoints and exact resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from support.files import header, rewrite, with_header

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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same run: nothing to warn of
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
    with pytest.raises(FileNotFoundError, match="cannot save to .*m.safetensors: folder .* does not exist"):
        model.save(tmp_path / "no" / "such" / "m.safetensors")


def test_a_folder_or_file_that_may_not_be_written_is_named(tmp_path, monkeypatch):
    model = model_with_dropout()
    (tmp_path / "ro.safetensors").write_bytes(b"old")
    read_only = {tmp_path / "ro.safetensors"}
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) not in read_only)
    with pytest.raises(PermissionError, match=r"cannot save to .*ro.safetensors: not allowed to write"):
        model.save(tmp_path / "ro.safetensors")
    read_only.add(tmp_path)  # the folder
    with pytest.raises(PermissionError, match=r"checkpoint .*ck.safetensors: not allowed to write"):
        model.fit(*nn.datasets.spiral_data(5, 3), checkpoint=tmp_path / "ck.safetensors", verbose=0)
    assert (tmp_path / "ro.safetensors").read_bytes() == b"old"


# ---- what a save keeps and a load refuses ---------------------------------------------------

def test_a_float64_model_comes_back_float64_and_float32_metadata_refuses_float64_tensors(tmp_path):
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 4), nn.ReLU(), nn.Dense(4, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy", dtype="float64")
    model.params[0] = 1 / 3  # not a float32 value
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = nn.load(path)
    assert loaded.dtype == np.float64 and loaded.params.dtype == np.float64
    assert loaded.params[0] == 1 / 3
    lying = rewrite(path, tmp_path / "lying.safetensors", meta=lambda m: m.update(dtype="float32"))
    with pytest.raises(ValueError, match="params is float64 but the file says float32"):
        nn.load(lying)


def test_optimizer_state_of_the_wrong_shape_is_refused(tmp_path):
    model = model_with_dropout()
    path = tmp_path / "m.safetensors"
    model.save(path)

    def one_value(tensors):
        tensors["optimizer.momentums"] = tensors["optimizer.momentums"][:1].copy()

    with pytest.raises(ValueError, match=r"optimizer.momentums has shape \(1,\); params has"):
        nn.load(rewrite(path, tmp_path / "short.safetensors", tensors=one_value))
    state = model.network.state_dict(host=True)
    spread = dict(state, optimizer=dict(state["optimizer"], state=dict(
        state["optimizer"]["state"], momentums=state["optimizer"]["state"]["momentums"][:1])))
    before = model.get_params()
    with pytest.raises(ValueError, match=r"the optimizer state 'momentums' has shape \(1,\); the model "
                                         r"needs \(\d+,\)"):
        model.network.load_state_dict(spread)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))


def test_load_refuses_non_finite_parameters_and_a_missing_step_count(tmp_path):
    model = model_with_dropout()
    path = tmp_path / "m.safetensors"
    model.save(path)

    def nan(tensors):
        tensors["params"][3] = np.nan

    with pytest.raises(ValueError, match="non-finite values in params"):
        nn.load(rewrite(path, tmp_path / "nan.safetensors", tensors=nan))
    with pytest.raises(ValueError, match="optimizer is not described as gpunn writes it"):
        nn.load(rewrite(path, tmp_path / "noit.safetensors",
                        meta=lambda m: m["optimizer"].pop("iterations")))


def test_declared_sizes_are_checked_against_the_stored_tensors_before_anything_is_built(tmp_path):
    """A small file declaring Dense(10**6, 10**6) (7.3 TiB of float64) is refused, not built."""
    model = model_with_dropout()
    path = tmp_path / "m.safetensors"
    model.save(path)

    def huge(meta):
        meta["layers"] = [{"type": "Dense", "config": dict(meta["layers"][0]["config"],
                                                           n_inputs=10**6, n_neurons=10**6)}]

    crafted = rewrite(path, tmp_path / "huge.safetensors", meta=huge)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"its layers need 1000001000000 parameters; it stores"):
        nn.load(crafted)
    assert time.perf_counter() - started < 5  # nothing of that size was allocated


def test_a_raw_header_that_lies_about_sizes_is_refused(tmp_path):
    model = model_with_dropout()
    path = tmp_path / "m.safetensors"
    model.save(path)
    _, head = header(path)
    n = head["params"]["shape"][0]

    def bigger(h):
        h["params"]["shape"] = [n * 1000]

    def past_the_end(h):
        h["params"]["data_offsets"][1] += 10**9

    for i, (change, length) in enumerate([(bigger, None), (past_the_end, None),
                                          (lambda h: None, lambda true: true + 10**6),
                                          (lambda h: None, lambda true: 2**63)]):
        crafted = with_header(path, tmp_path / f"lie{i}.safetensors", change, length)
        with pytest.raises(ValueError, match="is not a valid gpunn model file"):
            nn.load(crafted)


def test_a_save_keeps_the_mode_of_the_file_it_replaces_else_follows_the_umask(tmp_path):
    model = model_with_dropout()
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "new.safetensors")
        assert (tmp_path / "new.safetensors").stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.safetensors"
        kept.write_bytes(b"old")
        kept.chmod(0o640)
        model.save(kept)
        assert kept.stat().st_mode & 0o777 == 0o640
        assert nn.load(kept).params.shape == model.params.shape
    finally:
        os.umask(old)


def test_a_file_name_the_folder_takes_is_a_name_save_takes(tmp_path):
    name = "m" * 240 + ".safetensors"  # 252 characters, under the usual limit of 255
    model = model_with_dropout()
    model.save(tmp_path / name)
    assert nn.load(tmp_path / name).params.shape == model.params.shape
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_failed_save_leaves_the_previous_file_and_no_temporary_one(tmp_path, monkeypatch):
    model = model_with_dropout()
    path = tmp_path / "m.safetensors"
    model.save(path)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    model.params += 1
    with pytest.raises(OSError, match="No space left"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_long_history_stays_out_of_the_header(tmp_path, data):
    """Checkpoints once carried their history in the JSON header (~43 bytes an epoch) and died
    with 'header too large' after long runs; the history is tensors now."""
    X, y = data
    model = model_with_dropout()
    ck = tmp_path / "ck.safetensors"
    model.fit(X, y, epochs=2, batch_size=None, verbose=0, checkpoint=ck)
    epochs = 3_000_000
    training = {"epoch": epochs, "rng": np.random.default_rng(0).bit_generator.state,
                "dropout_rngs": [np.random.default_rng(1).bit_generator.state],
                "history": {"loss": np.linspace(1, 0, epochs), "accuracy": np.zeros(epochs)},
                "history_epochs": np.arange(1, epochs + 1)}
    nn.io.save(model.network, ck, training=training)
    length, _ = header(ck)
    assert length < 8192
    resumed = model_with_dropout(seed=3)
    history = resumed.fit(X, y, epochs=epochs, batch_size=None, verbose=0, resume_from=ck)
    assert len(history.epoch) == epochs and history["loss"][-1] == 0.0
    for a, b in zip(model.get_params(), resumed.get_params()):
        np.testing.assert_array_equal(a, b)


# ---- resume: all or nothing -----------------------------------------------------------------

def broken(meta_change):
    def change(meta):
        meta_change(meta["training"])
    return change


@pytest.mark.parametrize("damage, pattern", [
    (broken(lambda t: t.pop("rng")), "a generator state does not read"),
    (broken(lambda t: t.update(rng={"bit_generator": "PCG64", "state": "x"})),
     "a generator state does not read"),
    (broken(lambda t: t.update(epoch=2.5)), "no whole epoch count"),
    (broken(lambda t: t.update(epoch=-1)), "no whole epoch count"),
    (broken(lambda t: t.update(dropout_rngs=[])), "0 dropout generator states"),
    (broken(lambda t: t.update(history_keys=["loss", "missing"])), "history is incomplete"),
    (lambda m: m["optimizer"].update(iterations="7"), "optimizer is not described"),
    (broken(lambda t: t["run"].update(rows=0)), "the run it records is malformed"),
    (broken(lambda t: t["run"].update(shuffle=1)), "the run it records is malformed"),
    (broken(lambda t: t["run"].pop("batch_size")), "the run it records is malformed"),
    (broken(lambda t: t.update(run=[120, 16, True])), "the run it records is malformed"),
])
def test_a_failing_resume_changes_nothing(tmp_path, data, damage, pattern):
    X, y = data
    ck = tmp_path / "ck.safetensors"
    model_with_dropout(seed=1).fit(X, y, epochs=2, batch_size=16, verbose=0, checkpoint=ck)
    crafted = rewrite(ck, tmp_path / "bad.safetensors", meta=damage)
    model = model_with_dropout(seed=2)
    before = model.get_params()
    rng_before = model.layers[2].rng.bit_generator.state
    with pytest.raises(ValueError, match=pattern):
        model.fit(X, y, epochs=4, batch_size=16, verbose=0, resume_from=crafted)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))
    assert model.optimizer.iterations == 0 and model.layers[2].rng.bit_generator.state == rng_before


@pytest.mark.parametrize("change, words", [
    ({"X": 100}, "a fit over 120 rows in batches of 16, shuffled; this fit is over 100 rows in "
                 "batches of 16, shuffled"),
    ({"batch_size": 32}, "this fit is over 120 rows in batches of 32, shuffled"),
    ({"shuffle": False}, "this fit is over 120 rows in batches of 16, in order"),
], ids=["rows", "batch_size", "shuffle"])
def test_a_resume_into_another_run_goes_on_with_a_warning(tmp_path, data, change, words):
    """Other rows, batches or order cannot end as the first run would have: fit says so (and
    goes on: fine-tuning on other data from a checkpoint is a user's right)."""
    X, y = data
    ck = tmp_path / "ck.safetensors"
    model_with_dropout(seed=1).fit(X, y, epochs=2, batch_size=16, verbose=0, checkpoint=ck)
    rows = change.get("X", len(X))
    options = {"batch_size": change.get("batch_size", 16), "shuffle": change.get("shuffle", True)}
    model = model_with_dropout(seed=2)
    said = f"resuming from {re.escape(str(ck))}, which was written by .*{words}: it will not end"
    with pytest.warns(UserWarning, match=said):
        history = model.fit(X[:rows], y[:rows], epochs=3, verbose=0, resume_from=ck, **options)
    assert history.epoch == [1, 2, 3]
    assert model.optimizer.iterations == 2 * 8 + -(-rows // options["batch_size"])


def test_a_resume_past_the_epochs_asked_for_trains_nothing_and_says_so(tmp_path, data):
    X, y = data
    ck = tmp_path / "ck.safetensors"
    first = model_with_dropout(seed=1)
    first.fit(X, y, epochs=3, batch_size=16, verbose=0, checkpoint=ck)
    model = model_with_dropout(seed=2)
    with pytest.warns(UserWarning, match="which is at epoch 3, past this fit's epochs=2 .*: "
                                         "nothing is trained"):
        history = model.fit(X, y, epochs=2, batch_size=16, verbose=0, resume_from=ck)
    assert history.epoch == [1, 2, 3] and model.optimizer.iterations == 3 * 8
    assert all(np.array_equal(a, b) for a, b in zip(first.get_params(), model.get_params()))


def test_a_checkpoint_from_before_runs_were_recorded_resumes_without_a_warning(tmp_path, data):
    X, y = data
    ck = tmp_path / "ck.safetensors"
    model_with_dropout(seed=1).fit(X, y, epochs=2, batch_size=16, verbose=0, checkpoint=ck)
    older = rewrite(ck, tmp_path / "older.safetensors", meta=broken(lambda t: t.pop("run")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model_with_dropout(seed=2).fit(X, y, epochs=3, batch_size=32, verbose=0, resume_from=older)


def test_resume_into_another_optimizer_rule_or_loss_is_refused_naming_the_difference(tmp_path, data):
    X, y = data
    ck = tmp_path / "ck.safetensors"

    def make(optimizer, loss=None, layers=None):
        nn.set_seed(0)
        model = nn.Sequential(layers or [nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        return model.compile(loss or nn.SoftmaxCrossEntropy(), optimizer, backend="numpy")

    make(nn.SGD(lr=0.1, momentum=0.9)).fit(X, y, epochs=1, verbose=0, checkpoint=ck)
    for other, pattern in [
        (make(nn.SGD(lr=0.1)), r"SGD keeps the state \['momentums'\]; this model's keeps \[\]"),
        (make(nn.Adam()), "saved with SGD; this model uses Adam"),
        (make(nn.SGD(lr=0.1, momentum=0.9), nn.CategoricalCrossEntropy(),
              [nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3), nn.Softmax()]), "holds a model of 3 layers"),
    ]:
        before = other.get_params()
        with pytest.raises(ValueError, match=pattern):
            other.fit(X, y, epochs=2, verbose=0, resume_from=ck)
        assert all(np.array_equal(a, b) for a, b in zip(before, other.get_params()))
    mse = make(nn.SGD(lr=0.1, momentum=0.9), nn.MeanSquaredError(),
               [nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
    with pytest.raises(ValueError, match="saved with the loss SoftmaxCrossEntropy; this model uses "
                                         "MeanSquaredError"):
        mse.fit(X, np.eye(3)[y], epochs=2, verbose=0, resume_from=ck)


def test_a_resumed_fit_trains_with_the_resuming_models_learning_rate(tmp_path, data):
    """The rule: the file brings the state (parameters, step count, buffers), the model its
    hyper-parameters. Saved with SGD(lr=1.0), resumed with SGD(lr=1e-4): steps of 1e-4."""
    X, y = data

    def make(lr):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        return model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=lr), backend="numpy")

    ck = tmp_path / "ck.safetensors"
    saved = make(1.0)
    saved.fit(X, y, epochs=1, batch_size=None, verbose=0, checkpoint=ck)
    resumed = make(1e-4)
    resumed.fit(X, y, epochs=2, batch_size=None, verbose=0, resume_from=ck)
    reference = make(1e-4)  # plain SGD keeps no state but its step count
    reference.set_params(saved.get_params())
    reference.fit(X, y, epochs=1, batch_size=None, verbose=0)
    for a, b in zip(reference.get_params(), resumed.get_params()):
        np.testing.assert_array_equal(a, b)
    assert resumed.optimizer.current_learning_rate == 1e-4 and resumed.optimizer.iterations == 2


def test_output_paths_are_checked_before_any_training(tmp_path, data):
    X, y = data
    model = model_with_dropout()
    before = model.get_params()
    with pytest.raises(FileNotFoundError, match="checkpoint .*ck.safetensors: folder .*nodir does not exist"):
        model.fit(X, y, epochs=3, verbose=0, checkpoint=tmp_path / "nodir" / "ck.safetensors",
                  checkpoint_every=2)
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        model.fit(X, y, epochs=3, verbose=0, checkpoint=tmp_path / "folder.safetensors")
    assert model.optimizer.iterations == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_params()))


def test_ctrl_c_during_validation_still_writes_the_checkpoint(tmp_path, data, monkeypatch):
    X, y = data
    model = model_with_dropout()
    ck = tmp_path / "ck.safetensors"
    evaluate, calls = model.network.evaluate_chunks, []

    def interrupted_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(model.network, "evaluate_chunks", interrupted_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, epochs=5, batch_size=None, verbose=0, validation_data=(X, y), checkpoint=ck)
    saved = nn.load(ck)
    assert saved.optimizer.iterations == model.optimizer.iterations == 2  # as of epoch 2
    for a, b in zip(saved.get_params(), model.get_params()):
        np.testing.assert_array_equal(a, b)
