"""MNIST from its IDX files: the four files published with the data set
(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
t10k-labels-idx1-ubyte.gz; torchvision and TensorFlow download the same files from public
mirrors). Put them in one folder, raw or gzip-compressed, and run

    python examples/mnist_idx.py path/to/folder

784-256-128-10 with He initialisation and Adam, mini-batches of 128, validation on the test set
each epoch, the best model kept in mnist-best.safetensors. On a GPU the same script runs on CuPy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gpunn as nn

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder} has no {name} (or {name}.gz); see this file's docstring")


def main(folder: str | Path, epochs: int = 10, hidden: tuple[int, int] = (256, 128),
         best: str | Path = "mnist-best.safetensors", verbose: int = 1) -> float:
    """Train on the training files and return the accuracy on the test files."""
    folder = Path(folder)
    X, y = nn.datasets.load_idx(find(folder, FILES[0]), find(folder, FILES[1]))
    X_test, y_test = nn.datasets.load_idx(find(folder, FILES[2]), find(folder, FILES[3]))
    classes = int(max(y.max(), y_test.max())) + 1
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(X.shape[1], hidden[0], init="he"), nn.ReLU(),
                           nn.Dense(hidden[0], hidden[1], init="he"), nn.ReLU(),
                           nn.Dense(hidden[1], classes, init="he")])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.001), backend="auto")
    model.fit(X, y, epochs=epochs, batch_size=128, seed=0, verbose=verbose,
              validation_data=(X_test, y_test), callbacks=[nn.ModelCheckpoint(best)])
    accuracy = nn.load(best).evaluate(X_test, y_test)["accuracy"]
    print(f"test accuracy of the best epoch's model ({best}): {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
