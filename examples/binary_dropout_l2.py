"""Binary classification with Dropout and L2 regularisation (the book's chapters 14-16): two
interleaved spirals, a sigmoid output and binary cross-entropy, held-out data for validation and
early stopping on it.

    python examples/binary_dropout_l2.py
"""

from __future__ import annotations

import gpunn as nn


def main(samples: int = 500, epochs: int = 2000, seed: int = 0, verbose: int = 0) -> float:
    """Train and return the accuracy on held-out points."""
    X, y = nn.datasets.spiral_data(samples=samples, classes=2, seed=seed)
    X_train, X_test, y_train, y_test = nn.datasets.train_test_split(X, y.reshape(-1, 1),
                                                                    test_size=0.2, seed=seed)
    nn.set_seed(seed)
    model = nn.Sequential([
        nn.Dense(2, 128, init="he", weight_regularizer_l2=5e-4, bias_regularizer_l2=5e-4),
        nn.ReLU(), nn.Dropout(0.1),
        nn.Dense(128, 1), nn.Sigmoid()])
    model.compile(nn.BinaryCrossEntropy(), nn.Adam(lr=0.01, decay=5e-7), backend="auto")
    stop = nn.EarlyStopping(monitor="val_loss", patience=200, restore_best_weights=True)
    model.fit(X_train, y_train, epochs=epochs, batch_size=None, seed=seed, verbose=verbose,
              validation_data=(X_test, y_test), callbacks=[stop])
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    print(f"held-out accuracy {accuracy:.3f} (best epoch {stop.best_epoch})")
    return accuracy


if __name__ == "__main__":
    main(verbose=1)
