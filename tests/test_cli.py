"""cli.py: ``gpunn train``, ``predict`` and ``info`` (``gpunn bench``: tests/bench/)."""

from __future__ import annotations

import numpy as np

import gpunn as nn
from gpunn import cli

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
    assert "epochs must be >= 0" in capsys.readouterr().err


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends available: numpy" in out and "numpy " in out and "BLAS" in out


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
    # --resume with more epochs continues from the checkpoint
    assert cli.main(args[:6] + ["9"] + args[7:] + ["--resume"]) == 0
    capsys.readouterr()
    assert nn.load(tmp_path / "ck.safetensors").optimizer.iterations == 9 * 5
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
