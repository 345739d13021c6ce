"""The same network on a GPU: the digits classifier trained on CuPy when a CUDA device answers
(NumPy otherwise), in TF32 where the GPU has it, then moved to the CPU and saved. Needs the
CUDA extra on the GPU machine: pip install "gpunn[cuda13,data]" (or cuda12, to match the driver).

    python examples/gpu.py
"""

from __future__ import annotations

import gpunn as nn
from gpunn.backends import available


def tf32_here() -> bool:
    """TF32 GEMMs need a GPU of compute capability 8.0 (Ampere) or newer."""
    return nn.backends.get_backend("cupy").why_not("tf32") is None


def main(epochs: int = 30, path: str = "digits-gpu.safetensors", verbose: int = 1) -> float:
    """Train, save, reload on the CPU; return the CPU copy's test accuracy."""
    X, y = nn.datasets.load_digits()
    X_train, X_test, y_train, y_test = nn.datasets.train_test_split(X, y, test_size=0.2, seed=0,
                                                                    stratify=True)
    on_gpu = "cupy" in available()
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(64, 256, init="he"), nn.ReLU(), nn.Dense(256, 10, init="he")])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.005), backend="cupy" if on_gpu else "numpy",
                  precision="tf32" if on_gpu and tf32_here() else "fp32")
    model.fit(X_train, y_train, epochs=epochs, batch_size=64, seed=0, verbose=verbose)
    print(f"trained on {model.backend.name} ({model.backend.device_name()})")
    model.to("numpy").save(path)  # parameters and optimizer state come back to the host
    accuracy = nn.load(path, backend="numpy").evaluate(X_test, y_test)["accuracy"]
    print(f"test accuracy on the CPU copy: {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    main()
