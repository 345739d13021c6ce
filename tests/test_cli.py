"""cli.py: ``gpunn train``, ``predict`` and ``info`` (``gpunn bench``: tests/bench/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpunn as nn
from gpunn import cli
from gpunn.backends import jit

PNG = b"\x89PNG\r\n\x1a\n"


def test_cli_train_prints_the_last_line(capsys):
    assert cli.main(["train", "--epochs", "200", "--backend", "numpy", "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("accuracy ") and " loss " in last and "(numpy, " in last


def test_cli_train_options(capsys):
    code = cli.main(["train", "--dataset", "vertical", "--samples", "50", "--classes", "4",
                     "--hidden", "16", "--epochs", "60", "--batch-size", "32", "--optimizer", "sgd",
                     "--lr", "0.5", "--seed", "3", "--quiet"])
    assert code == 0
    accuracy = float(capsys.readouterr().out.split()[1])
    assert accuracy > 0.8


def test_cli_errors_are_one_line(capsys):
    assert cli.main(["train", "--epochs", "-3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "gpunn train: error: argument --epochs: must be >= 0; got -3\n"


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends available: numpy" in out and "numpy " in out and "BLAS" in out
    assert ("CPU one-kernel trainer: on by default for Dense -> ReLU -> Dense networks of up to 16 "
            "inputs and classes together; model.backend.one_kernel_trainer = False turns it off"
            if jit.why_not() is None else
            f"CPU one-kernel trainer: unavailable ({jit.why_not()})") in out


def test_cli_train_npz_with_save_plot_checkpoint_resume_then_predict(tmp_path, capsys):
    X, y = nn.datasets.vertical_data(samples=60, classes=3, seed=0)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    args = ["train", "--dataset", str(tmp_path / "data.npz"), "--hidden", "16", "--epochs", "6",
            "--backend", "numpy", "--quiet", "--save", str(tmp_path / "m.safetensors"),
            "--plot", str(tmp_path / "c.png"), "--checkpoint", str(tmp_path / "ck.safetensors")]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("test accuracy ")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    assert nn.load(tmp_path / "ck.safetensors").optimizer.iterations == 6 * 5  # 144 rows / 32
    # --resume with more epochs continues from the checkpoint, quietly: the same run
    assert cli.main(args[:6] + ["9"] + args[7:] + ["--resume"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert nn.load(tmp_path / "ck.safetensors").optimizer.iterations == 9 * 5
    # another batch size goes on too, but says in one line that the run is not the first one's
    assert cli.main(args[:6] + ["10"] + args[7:] + ["--resume", "--batch-size", "16"]) == 0
    assert capsys.readouterr().err == (
        f"gpunn: warning: resuming from {tmp_path / 'ck.safetensors'}, which was written by a fit "
        f"over 144 rows in batches of 32, shuffled; this fit is over 144 rows in batches of 16, "
        f"shuffled: it will not end as the first run would have\n")
    assert nn.load(tmp_path / "ck.safetensors").optimizer.iterations == 9 * 5 + 9
    assert cli.main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "data.npz"),
                     "--output", str(tmp_path / "p.npz"), "--backend", "numpy"]) == 0
    assert "accuracy" in capsys.readouterr().err
    with np.load(tmp_path / "p.npz") as f:
        assert f["predictions"].shape == (180,) and f["outputs"].shape == (180, 3)
    assert cli.main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "data.npz"),
                     "--backend", "numpy"]) == 0
    assert len(capsys.readouterr().out.split()) == 180
    assert cli.main(["predict", str(tmp_path / "nope.safetensors"), str(tmp_path / "data.npz")]) == 2
    assert "no such model file" in capsys.readouterr().err


BAD_COMMANDS = [
    (["train", "--epochs", "-3"], "argument --epochs: must be >= 0; got -3"),
    (["train", "--hidden", "abc"], "argument --hidden: must be a whole number; got 'abc'"),
    (["train", "--hidden", "10000000000"], "argument --hidden: layers wider than 1048576 units"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number > 0; got nan"),
    (["train", "--decay", "-1"], "argument --decay: must be a finite number >= 0; got -1"),
    (["train", "--classes", "0"], "argument --classes: must be >= 1; got 0"),
    (["train", "--optimizer", "adamw"], "argument --optimizer: invalid choice: 'adamw'"),
    (["train", "--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
    (["train", "--dataset", "mnist.csv"], "--dataset must be spiral, vertical, digits or a .npz file"),
    (["train", "--save", "{tmp}/no/m.safetensors"], "--save {tmp}/no/m.safetensors: folder"),
    (["train", "--checkpoint", "{tmp}"], "--checkpoint {tmp} is a folder"),
    (["train", "--resume"], "--resume needs --checkpoint"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["predict", "{tmp}/none.safetensors", "{tmp}/d.npz"], "no such model file"),
    (["predict", "{tmp}/d.npz", "{tmp}/d.npz"], "is not a valid gpunn model file"),
    (["predict", "{tmp}/m.safetensors", "{tmp}/d.npz", "--output", "{tmp}/p.txt"],
     "--output must end in .npz or .csv"),
    (["predict", "{tmp}/m.safetensors", "{tmp}/wide.npz"], "X must have 2 features"),
    (["predict", "{tmp}/m.safetensors", "{tmp}/m.safetensors"], "is not a valid .npz file"),
    (["predict"], "the following arguments are required: model, data"),
    (["bench", "--workloads", "huge"], "--workloads: unknown workload 'huge'"),
    (["bench", "--repeats", "0"], "argument --repeats: must be >= 1; got 0"),
    (["bench", "--json", "{tmp}/no/b.json"], "--json {tmp}/no/b.json: folder"),
    (["info", "--verbose"], "unrecognized arguments: --verbose"),
    (["fly"], "argument command: invalid choice: 'fly'"),
    ([], "the following arguments are required: command"),
]


@pytest.fixture
def files(tmp_path):
    X, y = nn.datasets.vertical_data(samples=20, classes=3, seed=0)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.savez(tmp_path / "wide.npz", X=np.ones((4, 5)))
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 4), nn.ReLU(), nn.Dense(4, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy").save(tmp_path / "m.safetensors")
    return tmp_path


@pytest.mark.parametrize("argv, says", BAD_COMMANDS, ids=[" ".join(a) or "none" for a, _ in BAD_COMMANDS])
def test_every_bad_command_line_is_one_line_and_status_2(argv, says, files, capsys):
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    assert cli.main([*argv, "--quiet"] if argv[:1] == ["train"] else argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err
    assert err.startswith(("gpunn: error: ", f"gpunn {argv[0]}: error: " if argv else "gpunn: "))
    assert says.replace("{tmp}", str(files)) in err


def test_output_checks_come_before_the_work(tmp_path, monkeypatch, capsys):
    """A plot without matplotlib, or a save into a missing folder, fails at once, not after
    training (or after the whole benchmark suite)."""
    from gpunn.bench import suite

    for name in ("matplotlib", "matplotlib.figure"):  # as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(suite, "run_suite", lambda *a: pytest.fail("the suite ran"))
    monkeypatch.setattr(nn.Sequential, "fit", lambda *a, **k: pytest.fail("training ran"))
    assert cli.main(["bench", "--plot", str(tmp_path / "b.png")]) == 2
    assert 'needs matplotlib: pip install "gpunn[plot]"' in capsys.readouterr().err
    assert cli.main(["train", "--plot", str(tmp_path / "c.png"), "--quiet"]) == 2
    assert 'needs matplotlib' in capsys.readouterr().err
    assert cli.main(["train", "--save", str(tmp_path / "no" / "m.st"), "--quiet"]) == 2
    assert list(tmp_path.iterdir()) == []


def run_gpunn(*argv, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "gpunn", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, **kwargs)


def test_a_traceback_only_when_asked_for():
    quiet = run_gpunn("train", "--dataset", "nope.npz", "--quiet")
    assert quiet.returncode == 2 and quiet.stderr == "gpunn: error: no such data file: nope.npz\n"
    for loud in (run_gpunn("--debug", "train", "--dataset", "nope.npz", "--quiet"),
                 run_gpunn("train", "--dataset", "nope.npz", "--quiet", env={"GPUNN_DEBUG": "1"})):
        assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
        assert "FileNotFoundError: no such data file: nope.npz" in loud.stderr


def test_ctrl_c_is_one_line_status_130_and_names_the_checkpoint(tmp_path):
    ck = tmp_path / "ck.safetensors"
    # A test run started in the background of a shell without job control (`make test &` in a
    # script) ignores SIGINT; a child inherits that, and Python leaves it ignored, so the
    # interrupt below would never come. The child starts with Ctrl-C's default action instead.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        child = subprocess.Popen([sys.executable, "-m", "gpunn", "train", "--epochs", "100000000",
                                  "--backend", "numpy", "--checkpoint", str(ck),
                                  "--checkpoint-every", "500", "--quiet"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        deadline = time.monotonic() + 60
        while not ck.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # training is under way once the first checkpoint is written
        os.killpg(child.pid, signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f"gpunn: interrupted; {ck} holds the last finished epoch: run the same command with "
        f"--resume to go on from there")
    assert "Traceback" not in err
    assert nn.load(ck).optimizer.iterations >= 500


def test_version_and_the_backend_line(tmp_path):
    version = run_gpunn("--version")
    assert version.returncode == 0 and version.stdout == f"gpunn {nn.__version__}\n"
    env = {"GPUNN_BACKEND": ""}
    loud = run_gpunn("train", "--epochs", "1", "--samples", "5", env=env)
    quiet = run_gpunn("train", "--epochs", "1", "--samples", "5", "--quiet", env=env)
    assert "gpunn: backend 'auto' chose" in loud.stderr
    assert quiet.stderr == "" and quiet.stdout.startswith("accuracy ")


def test_held_out_data_is_validated_every_epoch(tmp_path, monkeypatch, capsys):
    X, y = nn.datasets.vertical_data(samples=20, classes=3, seed=0)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    seen = {}
    real = nn.Sequential.fit

    def fit(self, *args, **kwargs):
        history = real(self, *args, **kwargs)
        seen["keys"] = history.keys()
        return history

    monkeypatch.setattr(nn.Sequential, "fit", fit)
    assert cli.main(["train", "--dataset", str(tmp_path / "d.npz"), "--epochs", "2", "--quiet",
                     "--backend", "numpy"]) == 0
    assert seen["keys"] == ["loss", "accuracy", "val_loss", "val_accuracy"]


def test_cupy_without_a_device_says_so_not_install_more(monkeypatch):
    from gpunn import backends

    monkeypatch.setattr(backends, "cupy_problem",
                        lambda: "CuPy imports but no CUDA device answers (CUDARuntimeError: no device)")
    with pytest.raises(backends.BackendUnavailableError, match="check that nvidia-smi lists a GPU"):
        backends.get_backend("cupy")


def test_train_on_two_processes_relaunches_under_mpiexec(tmp_path):
    from support.ranks import mpiexec

    mpiexec()  # skips where the mpi extra has no MPI
    common = ["train", "--epochs", "5", "--samples", "20", "--backend", "numpy", "--quiet"]
    two = run_gpunn(*common, "--nproc", "2", "--save", str(tmp_path / "two.safetensors"))
    one = run_gpunn(*common, "--save", str(tmp_path / "one.safetensors"))
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    assert len(two.stdout.splitlines()) == 1 and two.stdout.startswith("accuracy ")  # rank 0's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "two.safetensors"]
    for a, b in zip(nn.load(tmp_path / "two.safetensors").get_params(),
                    nn.load(tmp_path / "one.safetensors").get_params()):
        np.testing.assert_allclose(a, b, atol=1e-3)  # float32 Adam: rounding of the two halves
