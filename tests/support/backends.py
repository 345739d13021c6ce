"""NumPy backends for the tests, each taking a path the plain NumPy backend does not. Each is a
Backend like any other: ``compile(..., backend=PlanningNumpy())`` gives the model its own
configured copy of it, sharing the lists the helpers record into."""

from __future__ import annotations

import math

import numpy as np

from gpunn.backends import schedule as slots
from gpunn.backends.base import Options
from gpunn.backends.cuda.cublaslt import relu_mask_shape
from gpunn.backends.numpy_backend import NumpyBackend


class PlanningNumpy(NumpyBackend):
    """Plans steps as the CuPy backend does (static inputs, device schedule, totals on the
    device), without graphs: the plan logic, checked against the plain step on the CPU. Its
    steps stay planned: the compiled trainer is off unless a model turns it on."""

    default_options = Options()

    def why_not(self, feature, rows=None, sizes=None, dtype=None):
        if feature == "planned_steps":
            return None
        return super().why_not(feature, rows, sizes, dtype)


class RecordingNumpy(PlanningNumpy):
    """Planned steps with stand-in graphs: ``capture`` records the body, and a replay runs it
    again; ``recorded`` and ``replays`` count them (shared by the models' copies)."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded: list = []
        self.replays: list = []

    def why_not(self, feature, rows=None, sizes=None, dtype=None):
        if feature == "graphs":
            return None
        return super().why_not(feature, rows, sizes, dtype)

    def capture(self, body):
        self.recorded.append(body)

        def replay():
            self.replays.append(body)
            body()
        return replay


class OneKernelNumpy(PlanningNumpy):
    """train_in_one_kernel in NumPy, in the order of the CUDA kernel; ``launches`` lists the
    epochs of each launch."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: list[int] = []

    def why_not(self, feature, rows=None, sizes=None, dtype=None):
        if feature == "one_kernel_trainer":
            return None
        return super().why_not(feature, rows, sizes, dtype)

    def train_in_one_kernel(self, X, y, params, grads, states, schedule, totals, epochs, rule, outs):
        self.launches.append(epochs)
        code, hyper, epsilon = rule
        n, n_in = X.shape
        hidden, k = outs["hidden"].shape[1], outs["logits"].shape[1]
        o1 = n_in * hidden
        o2, o3 = o1 + hidden, o1 + hidden + hidden * k
        W1, b1 = params[:o1].reshape(n_in, hidden), params[o1:o2]
        W2, b2 = params[o2:o3].reshape(hidden, k), params[o3:]
        rows = np.arange(n)
        for epoch in range(epochs):
            H = np.maximum(X @ W1 + b1, 0)
            Z = H @ W2 + b2
            P = np.exp(Z - Z.max(axis=1, keepdims=True))
            P /= P.sum(axis=1, keepdims=True)
            losses = -np.log(np.clip(P[rows, y], 1e-7, 1 - 1e-7))
            D = P.copy()
            D[rows, y] -= 1
            D *= P.dtype.type(1.0 / n)
            totals[epoch] += [losses.sum(), (Z.argmax(axis=1) == y).sum()]
            dH = (D @ W2.T) * (H > 0)
            grads[...] = np.concatenate([(X.T @ dH).ravel(), dH.sum(axis=0), (H.T @ D).ravel(),
                                         D.sum(axis=0)])
            slots.advance(schedule)  # lr_t, Adam's corrections for step t + 1, t += 1
            lr, g = params.dtype.type(schedule[slots.LR_T]), grads
            beta_1, beta_2 = schedule[slots.BETA_1], schedule[slots.BETA_2]
            if code == slots.RULE_SGD:
                params -= lr * g
            elif code == slots.RULE_SGD_MOMENTUM:
                u = states[0]
                u[...] = params.dtype.type(hyper) * u - lr * g
                params += u
            elif code == slots.RULE_CACHE:
                c = states[0]
                c[...] = c + g * g if hyper < 0 else hyper * c + (1 - hyper) * g * g
                params -= lr * g / (np.sqrt(c) + epsilon)
            else:
                m, v = states
                m[...] = beta_1 * m + (1 - beta_1) * g
                v[...] = beta_2 * v + (1 - beta_2) * g * g
                params -= lr * (m * schedule[slots.CORRECTION_1]) / (
                    np.sqrt(v * schedule[slots.CORRECTION_2]) + epsilon)
        for name, value in (("hidden", H), ("dhidden", dH), ("logits", Z), ("probs", P),
                            ("dlogits", D), ("losses", losses)):
            outs[name][...] = value.reshape(outs[name].shape)


class MaskingNumpy(NumpyBackend):
    """Writes the ReLU mask in the forward pass as packed bits (as cuBLASLt's RELU_AUX_BIAS
    does) and takes the ReLU gradient from it; ``counts`` says how often each happened."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = {"written": 0, "read": 0}

    def relu_mask_shape(self, rows, cols):
        return relu_mask_shape(rows, cols)

    def dense_forward(self, inputs, weights, biases, out, relu, mask=None, out16=None):
        super().dense_forward(inputs, weights, biases, out, relu, out16=out16)
        if mask is None:
            return False
        assert relu and mask.shape == relu_mask_shape(*out.shape)
        mask[...] = 0
        mask[:, :math.ceil(out.shape[1] / 8)] = np.packbits(out > 0, axis=1, bitorder="little")
        self.counts["written"] += 1
        return True

    def dinputs_relu_bgrad(self, dvalues, weights, out, below_output, below_dbiases, mask=None,
                           out16=None):
        assert out16 is None, "bf16 models keep no mask"
        if mask is None:
            return super().dinputs_relu_bgrad(dvalues, weights, out, below_output, below_dbiases)
        self.gemm(dvalues, weights, out=out, trans_b=True)
        keep = np.unpackbits(mask, axis=1, count=out.shape[1], bitorder="little").astype(bool)
        np.multiply(out, keep, out=out)
        self.bias_grad(out, out=below_dbiases)
        self.counts["read"] += 1
        return out


class Bf16Numpy(NumpyBackend):
    """Takes precision "bf16" (which the NumPy backend refuses) with base.py's reference ops:
    GEMM operands rounded to bfloat16 and widened back exactly, float32 sums. The bf16 training
    path of the layers and the network, at NumPy's speed."""

    def why_not(self, feature, rows=None, sizes=None, dtype=None):
        if feature == "bf16":
            return None
        return super().why_not(feature, rows, sizes, dtype)
