"""Data sets and the command line."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn as nn
from gpunn import cli


def test_spiral_data_shapes_and_seed():
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    assert X.shape == (300, 2) and y.shape == (300,)
    assert np.bincount(y).tolist() == [100, 100, 100]
    X2, _ = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    assert np.array_equal(X, X2)
    assert not np.array_equal(X, nn.datasets.spiral_data(samples=100, classes=3, seed=1)[0])
    # the cs231n spiral: radius grows linearly from 0 to 1 along each arm
    np.testing.assert_allclose(np.hypot(X[:100, 0], X[:100, 1]), np.linspace(0, 1, 100))


def test_spiral_matches_the_nnfs_recipe_with_the_legacy_generator():
    """nnfs.init() seeds NumPy's global generator with 0; seed=0 reproduces its draws."""
    X, _ = nn.datasets.spiral_data(samples=5, classes=2, seed=0)
    rng = np.random.RandomState(0)
    t0 = np.linspace(0, 4, 5) + rng.randn(5) * 0.2
    r = np.linspace(0, 1, 5)
    np.testing.assert_allclose(X[:5], np.c_[r * np.sin(t0 * 2.5), r * np.cos(t0 * 2.5)])


def test_vertical_and_sine_data():
    X, y = nn.datasets.vertical_data(samples=50, classes=4, seed=0)
    assert X.shape == (200, 2) and set(y.tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(X[y == 2, 0].mean(), 2 / 3, atol=0.05)
    X, y = nn.datasets.sine_data(samples=10)
    assert X.shape == y.shape == (10, 1)
    np.testing.assert_allclose(y, np.sin(2 * np.pi * X))
    with pytest.raises(ValueError, match="samples must be >= 1"):
        nn.datasets.spiral_data(samples=0)


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
