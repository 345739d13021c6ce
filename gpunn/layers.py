"""Layers with the book's names: ``forward``/``backward``, ``.output``, ``.dinputs``, ``.weights``,
``.biases``, ``.dweights``, ``.dbiases``. Each layer calls backend ops, so the same code runs on
NumPy and CuPy.

A layer called on its own behaves as the book's: each call's results are new arrays nobody else
writes, and it runs where its data lives (CuPy arrays on the GPU, its parameters moving there with
it; ``gpunn.backends.use`` pins a backend instead). A layer compiled into a model is *bound* to the
model's network: it writes into buffers kept per batch shape (planned once, then reused), so a
training step allocates nothing and can be replayed as a CUDA graph.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import checks
from .backends import Backend, backend_of, get_backend
from .backends.bf16 import BF16_BITS

INITS = ("he", "glorot", "nnfs")

# Initial weights come from one host generator, so a seed gives the same weights on every backend.
_init_rng = np.random.default_rng()


def set_seed(seed: int | None) -> None:
    """Seed the generator that draws initial weights and default dropout masks."""
    global _init_rng
    _init_rng = np.random.default_rng(seed)


def _child_rng() -> np.random.Generator:
    return np.random.default_rng(_init_rng.integers(2**63))


def _check_regularizer(name: str, value: float) -> float:
    return checks.real_number(value, name, 0)


class Buffered:
    """What layers and losses share: the backend they run on, and the arrays they write their
    outputs and gradients into: new ones each call on their own, kept and reused (one per name
    and shape) once ``bind`` made them part of a compiled network."""

    def __init__(self) -> None:
        self.backend: Backend = get_backend("numpy")
        self.bound = False  # part of a compiled network: buffers reused, backend fixed
        self.owner: Any = None  # a weak reference to the model compiled with it
        #: (name, shape, dtype) -> the array ``buffer`` gave for it (bound only)
        self.buffers: dict[tuple, Any] = {}
        self.output: Any = None
        self.dinputs: Any = None

    def buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """An array for ``name`` at this shape: a new one each call on its own; bound, the same
        one every step (allocated on first use, then kept)."""
        if not self.bound:
            return self.backend.empty(shape, dtype)
        key = (name, shape, dtype)
        buf = self.buffers.get(key)
        if buf is None:
            if len(self.buffers) > 32:  # many shapes in turn: start over
                self.buffers.clear()
            buf = self.buffers[key] = self.backend.empty(shape, dtype)
        return buf

    def bind(self, backend: Backend) -> None:
        """Become part of a compiled network on ``backend``: buffers kept from now on."""
        self.backend, self.bound = backend, True
        self.buffers.clear()
        self.output = self.dinputs = None

    def move_to(self, backend: Backend) -> None:
        """Run on ``backend`` from now on, on one's own (subclasses move their parameters)."""
        self.backend, self.bound = backend, False
        self.buffers.clear()
        self.output = self.dinputs = None

    def follow(self, *arrays: Any, names: tuple[str, ...] = ("inputs",)) -> Backend:
        """The backend to compute on for ``arrays``: a bound object's network's (its data was
        prepared there); on its own, the data's (``backend_of``), moving there first."""
        if self.bound:
            return self.backend
        bk = backend_of(*arrays, names=names)
        if bk is not self.backend:
            self.move_to(bk)
        return bk

    def __getstate__(self) -> dict[str, Any]:
        """For pickle and copy.deepcopy: arrays as NumPy copies, the backend by name, no buffers,
        nothing of the last pass (outputs, gradients), standalone again."""
        state = {key: (self.backend.to_numpy(value) if _is_array(value) else value)
                 for key, value in self.__dict__.items() if key not in TRANSIENT}
        state["backend"], state["bound"], state["buffers"] = self.backend.name, False, {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from .backends import available

        name = state["backend"] if state["backend"] in available() else "numpy"
        backend = get_backend(name)
        self.__dict__.update({key: backend.asarray(value) if _is_array(value) else value
                              for key, value in state.items()})
        self.backend = backend
        for key in TRANSIENT:
            setattr(self, key, None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: What a pickled layer or loss leaves out: the last pass's arrays, remade by the next one, and
#: the model it belonged to.
TRANSIENT = ("output", "dinputs", "inputs", "relu_mask", "mask", "dweights", "dbiases", "owner",
             "operands", "dinputs16")


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__")


class Layer(Buffered):
    """A layer: ``forward(inputs, training)`` sets ``.output``; ``backward(dvalues)`` sets
    ``.dinputs`` (and, for Dense, ``.dweights`` and ``.dbiases``)."""

    trainable = False

    def _dtype(self, inputs: Any) -> Any:
        return inputs.dtype

    def predictions(self, outputs: Any) -> Any:
        """What the outputs predict, when this is the last layer (the book's ``predictions``)."""
        return outputs


class Dense(Layer):
    """A fully connected layer: ``output = inputs @ weights + biases``.

    ``init``: "nnfs" (the default, the book's ``0.01 * randn`` weights, which reproduce its runs),
    "he" (scaled for ReLU; the choice for deeper networks) or "glorot" (for sigmoid/linear).
    """

    trainable = True

    def __init__(self, n_inputs: int, n_neurons: int, init: str = "nnfs",
                 weight_regularizer_l1: float = 0, weight_regularizer_l2: float = 0,
                 bias_regularizer_l1: float = 0, bias_regularizer_l2: float = 0,
                 seed: int | None = None) -> None:
        super().__init__()
        for name, value in (("n_inputs", n_inputs), ("n_neurons", n_neurons)):
            checks.whole_number(value, name, 1)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}; got {init!r}")
        self.n_inputs, self.n_neurons, self.init = int(n_inputs), int(n_neurons), init
        self.weight_regularizer_l1 = _check_regularizer("weight_regularizer_l1", weight_regularizer_l1)
        self.weight_regularizer_l2 = _check_regularizer("weight_regularizer_l2", weight_regularizer_l2)
        self.bias_regularizer_l1 = _check_regularizer("bias_regularizer_l1", bias_regularizer_l1)
        self.bias_regularizer_l2 = _check_regularizer("bias_regularizer_l2", bias_regularizer_l2)
        self.weights = self._initial_weights(np.random.default_rng(seed) if seed is not None
                                             else _init_rng)
        self.biases = np.zeros((1, self.n_neurons))
        self.dweights: Any = None
        self.dbiases: Any = None
        self.inputs: Any = None
        # Set by the network (network.fold): a following ReLU folded into this layer, and whether
        # the layer below needs dinputs at all (the first layer's would be thrown away).
        self.activation: str | None = None
        self.need_dinputs = True
        # Also set there, for Dense -> ReLU -> Dense: the upper layer's dinputs GEMM takes on
        # the lower one's ReLU backward and bias gradient (``relu_below`` names the lower layer,
        # ``relu_above`` the upper); ``relu_mask`` is what the forward kept for it.
        self.relu_below: Dense | None = None
        self.relu_above: Dense | None = None
        self.relu_mask: Any = None
        #: Precision "bf16": GEMM operands of this layer's that the pass writing their float32
        #: values rounded as well (the network's pass over the weights, the loss's gradient
        #: pass): name -> (the float32 array, its bfloat16 copy), each taken once. (Between the
        #: layers of a Dense -> ReLU -> Dense pair, the output and its gradient are bfloat16
        #: alone.)
        self.rounded: dict[str, tuple[Any, Any]] = {}
        #: What the forward GEMM read, (inputs, weights): the layer's own, or under precision
        #: "bf16" their bfloat16 copies, which the backward GEMMs read too.
        self.operands: Any = None

    def _initial_weights(self, rng: np.random.Generator) -> np.ndarray:
        shape = (self.n_inputs, self.n_neurons)
        if self.init == "nnfs":  # the book: small random weights (biases start at zero)
            return 0.01 * rng.standard_normal(shape)
        if self.init == "he":  # keeps ReLU activations' variance steady through depth
            return rng.standard_normal(shape) * math.sqrt(2.0 / self.n_inputs)
        limit = math.sqrt(6.0 / (self.n_inputs + self.n_neurons))  # glorot (uniform): for
        return rng.uniform(-limit, limit, shape)  # tanh/sigmoid/linear

    def __repr__(self) -> str:
        return f"Dense({self.n_inputs}, {self.n_neurons})"

    def move_to(self, backend: Backend) -> None:
        """Run on ``backend``, with the weights, biases and any optimizer state the book's
        per-layer calls keep here (weight_momentums, bias_cache, ...) moved along."""
        old = self.backend
        super().move_to(backend)
        for name in ("weights", "biases", *OPTIMIZER_STATE):
            value = getattr(self, name, None)
            if value is not None:
                setattr(self, name, backend.asarray(old.to_numpy(value)))
        self.dweights = self.dbiases = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "rounded": {}}  # copies from a pass, as its outputs

    @property
    def grads_from_above(self) -> bool:
        """Whether the Dense layer above does this layer's ReLU backward and bias gradient."""
        return self.relu_above is not None

    @property
    def regularized(self) -> bool:
        return any((self.weight_regularizer_l1, self.weight_regularizer_l2,
                    self.bias_regularizer_l1, self.bias_regularizer_l2))

    def _dtype(self, inputs: Any) -> Any:
        if inputs.dtype == self.weights.dtype:  # the usual case, and much cheaper to check
            return inputs.dtype
        if inputs.dtype == BF16_BITS:  # "bf16": a Dense layer's output below, float32 weights
            return self.weights.dtype
        return np.result_type(inputs.dtype, self.weights.dtype)

    def forward(self, inputs: Any, training: bool = True) -> Any:
        """output = inputs @ weights + biases (then ReLU, when the model folded one in)."""
        bk = self.follow(inputs)
        inputs = bk.asarray(inputs)
        self.inputs = inputs
        out = self.buffer("output", (inputs.shape[0], self.n_neurons), self._dtype(inputs))
        relu = self.activation == "relu"
        keep_mask = relu and training and self.grads_from_above  # for the backward pass
        mask_shape = bk.relu_mask_shape(*out.shape) if keep_mask else None
        mask = None if mask_shape is None else self.buffer("relu_mask", mask_shape, np.uint8)
        self.operands = (self._gemm_operand(bk, "inputs16", inputs),
                         self._gemm_operand(bk, "weights16", self.weights))
        # Precision "bf16", below another Dense layer: the output is kept in bfloat16 alone (the
        # upper layer's GEMM operand, and what its backward reads the ReLU from); ``out`` is then
        # the float32 array the GEMM writes and the bias pass reads.
        below_dense = bk.precision == "bf16" and self.relu_above is not None
        out16 = self.buffer("output16", out.shape, BF16_BITS) if below_dense else None
        wrote_mask = bk.dense_forward(*self.operands, self.biases, out, relu, mask, out16=out16)
        self.relu_mask = mask if wrote_mask else None
        self.output = out if out16 is None else out16
        return self.output

    def backward(self, dvalues: Any) -> Any:
        """dweights = inputs.T @ dvalues; dbiases = column sums; dinputs = dvalues @ weights.T."""
        bk = self.follow(dvalues, names=("dvalues",))
        if self.activation == "relu" and not self.grads_from_above:
            # The folded ReLU's backward, in place: dvalues is a planned buffer of the model's.
            bk.relu_backward(dvalues, self.output, out=dvalues)
        # Bound, dweights and dbiases are views into the network's flat gradient buffer; on its
        # own the layer hands out new arrays each pass, as the book's does.
        if not self.bound or self.dweights is None or self.dweights.dtype != self.weights.dtype:
            self.dweights = bk.empty(self.weights.shape, self.weights.dtype)
            self.dbiases = bk.empty(self.biases.shape, self.biases.dtype)
        # bf16: the copies the forward GEMM read; else the layer's own (as the book's backward
        # reads self.inputs and self.weights, whatever was assigned to them since).
        inputs, weights = self.operands if bk.precision == "bf16" else (self.inputs, self.weights)
        gemm_dvalues = self._gemm_operand(bk, "dvalues16", dvalues)

        def weight_grads() -> None:
            # dbiases too, unless the layer above already wrote them
            if self.grads_from_above:
                bk.weight_grads(inputs, gemm_dvalues, None, self.dweights, None,
                                scratch=self.buffer)
            else:
                bk.weight_grads(inputs, gemm_dvalues, dvalues, self.dweights, self.dbiases,
                                scratch=self.buffer)
            if self.regularized:
                bk.penalty_grad(self.dweights, self.weights, self.weight_regularizer_l1,
                                self.weight_regularizer_l2)
                bk.penalty_grad(self.dbiases, self.biases, self.bias_regularizer_l1,
                                self.bias_regularizer_l2)

        # Nothing below reads these gradients or writes what they are made from, so inside a
        # network's backward pass they may run beside the gradient handed down (Backend.aside).
        bk.aside(weight_grads)
        if self.need_dinputs:
            dtype = self.weights.dtype if dvalues.dtype == BF16_BITS else dvalues.dtype
            out = self.buffer("dinputs", self.inputs.shape, dtype)
            below = self.relu_below
            if below is None:
                self.dinputs = bk.gemm(gemm_dvalues, weights, out=out, trans_b=True)
            else:  # the lower layer's ReLU backward and bias gradient, on this GEMM
                # bf16: the gradient in bfloat16 alone (the lower layer's GEMM operand; its
                # bias gradient is summed from the float32 values here); out is the GEMM's.
                out16 = below.buffer("dvalues16", out.shape, BF16_BITS) \
                    if bk.precision == "bf16" else None
                self.dinputs = bk.dinputs_relu_bgrad(gemm_dvalues, weights, out, below.output,
                                                     below.dbiases, below.relu_mask, out16=out16)
        return self.dinputs

    def _gemm_operand(self, bk: Backend, name: str, x: Any) -> Any:
        """``x`` as this layer's GEMMs read it: itself, or under precision "bf16" a bfloat16 copy
        (rounded to nearest) in a buffer of its own. Only the GEMMs see the copies: the bias,
        the ReLU, the loss and the update work on float32 values, and the weights the update
        changes are float32 (master weights): a step too small for bf16's 8 bits still counts.
        Taken as they are: ``x`` already in bfloat16 (what the other layer of a Dense -> ReLU ->
        Dense pair hands over), and a copy the pass that wrote ``x`` wrote along with it
        (``rounded``: the weights, the loss's gradient)."""
        if bk.precision != "bf16" or x.dtype == BF16_BITS:
            return x
        written, copy = self.rounded.pop(name, (None, None))
        if written is x:
            return copy
        return bk.to_bf16(x, out=self.buffer(name, x.shape, BF16_BITS))

    def regularization_loss(self) -> Any:
        """The L1/L2 penalty of this layer's weights and biases (a backend scalar)."""
        bk = self.backend
        return (bk.penalty(self.weights, self.weight_regularizer_l1, self.weight_regularizer_l2)
                + bk.penalty(self.biases, self.bias_regularizer_l1, self.bias_regularizer_l2))

    def get_parameters(self) -> tuple[Any, Any]:
        return self.weights, self.biases

    def set_parameters(self, weights: Any, biases: Any) -> None:
        self.weights[...] = self.backend.asarray(weights)
        self.biases[...] = self.backend.asarray(biases)


#: What the optimizers' per-layer calls keep on a Dense layer (the book's attribute names).
OPTIMIZER_STATE = ("weight_momentums", "bias_momentums", "weight_cache", "bias_cache")


class Activation(Layer):
    """An activation: a backend op forward (``forward_op``) and its twin backward
    (``backward_op``, which needs only the output and the incoming gradient)."""

    forward_op = ""
    backward_op = ""

    def forward(self, inputs: Any, training: bool = True) -> Any:
        bk = self.follow(inputs)
        inputs = bk.asarray(inputs)
        self.inputs = inputs
        out = self.buffer("output", inputs.shape, inputs.dtype)
        self.output = getattr(bk, self.forward_op)(inputs, out=out)
        return self.output

    def backward(self, dvalues: Any) -> Any:
        bk = self.follow(dvalues, names=("dvalues",))
        out = self.buffer("dinputs", dvalues.shape, dvalues.dtype)
        self.dinputs = getattr(bk, self.backward_op)(dvalues, self.output, out=out)
        return self.dinputs


class ReLU(Activation):
    """max(0, x); the gradient passes only where the input was positive."""

    forward_op, backward_op = "relu", "relu_backward"

    def __init__(self) -> None:
        super().__init__()
        self.folded = False  # set by network.fold when the Dense before does this work


class Softmax(Activation):
    """exp(x) / sum(exp(x)) per row: class probabilities. Backward applies the softmax
    Jacobian, p * (d - sum(d * p)), per row."""

    forward_op, backward_op = "softmax", "softmax_backward"

    def predictions(self, outputs: Any) -> Any:
        """The class with the largest probability, per row."""
        return self.backend.xp.argmax(outputs, axis=1)


class Sigmoid(Activation):
    """1 / (1 + exp(-x)): independent probabilities, for binary cross-entropy. Backward:
    d * output * (1 - output)."""

    forward_op, backward_op = "sigmoid", "sigmoid_backward"

    def predictions(self, outputs: Any) -> Any:
        """1 where the probability is over 0.5, else 0."""
        return (outputs > 0.5) * 1


class Linear(Layer):
    """The identity, for regression outputs: output = inputs, dinputs = dvalues."""

    def forward(self, inputs: Any, training: bool = True) -> Any:
        self.inputs = self.output = self.follow(inputs).asarray(inputs)
        return self.output

    def backward(self, dvalues: Any) -> Any:
        self.dinputs = dvalues
        return self.dinputs


class Dropout(Layer):
    """Zeroes each input with probability ``rate`` while training, scaling the rest by
    1 / (1 - rate) so the expected activation is unchanged; the identity otherwise. Called on
    its own it is training unless told ``training=False``, as the book's layer always is."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = checks.real_number(rate, "rate", 0, 1)
        self.rng = _child_rng()
        self.mask: Any = None

    def __repr__(self) -> str:
        return f"Dropout({self.rate})"

    def forward(self, inputs: Any, training: bool = True) -> Any:
        bk = self.follow(inputs)
        inputs = bk.asarray(inputs)
        self.inputs = inputs
        if not training or self.rate == 0:
            self.mask = None
            self.output = inputs
            return inputs
        self.mask = self._draw_mask(bk, inputs.shape, inputs.dtype)
        out = self.buffer("output", inputs.shape, inputs.dtype)
        self.output = bk.xp.multiply(inputs, self.mask, out=out)
        return self.output

    def _draw_mask(self, bk: Backend, shape: tuple[int, ...], dtype: Any) -> Any:
        return bk.dropout_mask(shape, self.rate, self.rng, dtype)

    def backward(self, dvalues: Any) -> Any:
        if self.mask is None:
            self.dinputs = dvalues
            return dvalues
        bk = self.follow(dvalues, names=("dvalues",))
        out = self.buffer("dinputs", dvalues.shape, dvalues.dtype)
        self.dinputs = bk.xp.multiply(dvalues, self.mask, out=out)
        return self.dinputs
