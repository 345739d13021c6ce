"""Optimizers with the book's update rules and learning-rate decay lr / (1 + decay * t), t being
the number of steps taken so far (from 0).

In a compiled model all parameters live in one flat buffer, so ``step`` updates every weight and
bias with one backend call. The book's per-layer calls (``pre_update_params``,
``update_params(layer)``, ``post_update_params``) work too, with the same update rule.
"""

from __future__ import annotations

import math
from typing import Any

from .backends import Backend


def _check(name: str, value: Any, low: float, high: float | None = None,
           low_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        lo = "(" if low_open else "["
        span = f"{lo}{low}, {high})" if high is not None else ("> " if low_open else ">= ") + str(low)
        raise ValueError(f"{name} must be a finite number {'in ' if high is not None else ''}"
                         f"{span}; got {value!r}")
    return float(value)


class Optimizer:
    """Shared machinery: decay, the step counter, flat state buffers, the book's calls."""

    #: Names of the per-parameter state buffers this rule keeps (each shaped like the params).
    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float, decay: float = 0.0) -> None:
        self.learning_rate = _check("lr", lr, 0.0, low_open=True)
        self.decay = _check("decay", decay, 0.0)
        self.current_learning_rate = self.learning_rate
        self.iterations = 0
        self.state: dict[str, Any] = {}  # flat state buffers, allocated by ``build``
        self._scratch: Any = None

    @property
    def lr(self) -> float:
        return self.learning_rate

    def config(self) -> dict[str, Any]:
        """The constructor arguments, to rebuild an equal optimizer."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    # ---- flat buffers (a compiled model) ---------------------------------------------------

    def build(self, backend: Backend, size: int, dtype: Any) -> None:
        """Allocate zeroed state buffers for ``size`` parameters, and the step counter at 0."""
        self.state = {name: backend.zeros((size,), dtype) for name in self.state_names}
        self._scratch = backend.empty((size,), dtype)
        self.iterations = 0
        self.current_learning_rate = self.learning_rate

    def step(self, backend: Backend, params: Any, grads: Any) -> None:
        """One update of every parameter from its gradient, decay included."""
        self.pre_update_params()
        self._update(backend, params, grads, self.state, self._scratch)
        self.post_update_params()

    # ---- the same, with the schedule on the device (planned and captured steps) -------------

    def schedule_values(self) -> list[float]:
        """The device schedule's starting values (see Backend.advance_schedule)."""
        return [float(self.iterations), self.learning_rate, self.decay,
                getattr(self, "beta_1", 0.0), getattr(self, "beta_2", 0.0), 0.0, 0.0, 0.0]

    def step_scheduled(self, backend: Backend, params: Any, grads: Any, schedule: Any) -> None:
        """One update reading lr_t (and Adam's corrections) from the device ``schedule``, which
        it moves on; the host counters are kept in step by ``mirror_step``."""
        backend.advance_schedule(schedule)
        self._update_scheduled(backend, params, grads, self.state, schedule, self._scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        """(rule, hyper-parameter, epsilon) as the one-block trainer ``train_small_net`` of
        kernels.cu takes them; its state buffers are ``state_names`` in order."""
        raise NotImplementedError

    def mirror_step(self) -> None:
        """Count one step taken on the device, as ``step`` would have, without reading it back."""
        self.pre_update_params()
        self.post_update_params()

    # ---- the book's calls ------------------------------------------------------------------

    def pre_update_params(self) -> None:
        """Decay the learning rate: lr / (1 + decay * iterations)."""
        if self.decay:
            self.current_learning_rate = self.learning_rate / (1.0 + self.decay * self.iterations)

    def update_params(self, layer: Any) -> None:
        """Update one layer's weights and biases, keeping state on the layer as the book does."""
        backend = layer.backend
        for kind in ("weight", "bias"):
            param = getattr(layer, "weights" if kind == "weight" else "biases")
            grad = getattr(layer, "dweights" if kind == "weight" else "dbiases")
            state = {}
            for name in self.state_names:
                attr = f"{kind}_{name}"  # the book's weight_momentums, bias_cache, ...
                if getattr(layer, attr, None) is None:
                    setattr(layer, attr, backend.zeros(param.shape, param.dtype))
                state[name] = getattr(layer, attr)
            self._update(backend, param, grad, state, backend.empty(param.shape, param.dtype))

    def post_update_params(self) -> None:
        self.iterations += 1

    def _update(self, backend: Backend, params: Any, grads: Any, state: dict[str, Any],
                scratch: Any) -> None:
        raise NotImplementedError

    def _update_scheduled(self, backend: Backend, params: Any, grads: Any,
                          state: dict[str, Any], schedule: Any, scratch: Any) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """w -= lr * g; with momentum, u = momentum * u - lr * g, then w += u."""

    def __init__(self, lr: float = 1.0, decay: float = 0.0, momentum: float = 0.0) -> None:
        super().__init__(lr, decay)
        self.momentum = _check("momentum", momentum, 0.0, 1.0)
        self.state_names = ("momentums",) if self.momentum else ()

    def config(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "decay": self.decay, "momentum": self.momentum}

    def _update(self, backend, params, grads, state, scratch) -> None:
        backend.sgd_update(params, grads, state.get("momentums"), self.current_learning_rate,
                           self.momentum, scratch)

    def _update_scheduled(self, backend, params, grads, state, schedule, scratch) -> None:
        backend.sgd_update_scheduled(params, grads, state.get("momentums"), schedule,
                                     self.momentum, scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        return (1 if self.momentum else 0), self.momentum, 0.0


class Adagrad(Optimizer):
    """cache += g^2; w -= lr * g / (sqrt(cache) + epsilon)."""

    state_names = ("cache",)

    def __init__(self, lr: float = 1.0, decay: float = 0.0, epsilon: float = 1e-7) -> None:
        super().__init__(lr, decay)
        self.epsilon = _check("epsilon", epsilon, 0.0, low_open=True)

    def config(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "decay": self.decay, "epsilon": self.epsilon}

    def _update(self, backend, params, grads, state, scratch) -> None:
        backend.adagrad_update(params, grads, state["cache"], self.current_learning_rate,
                               self.epsilon, scratch)

    def _update_scheduled(self, backend, params, grads, state, schedule, scratch) -> None:
        backend.cache_update_scheduled(params, grads, state["cache"], schedule, self.epsilon,
                                       -1.0, scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        return 2, -1.0, self.epsilon  # rho < 0: Adagrad's running sum


class RMSprop(Optimizer):
    """cache = rho * cache + (1 - rho) * g^2; w -= lr * g / (sqrt(cache) + epsilon)."""

    state_names = ("cache",)

    def __init__(self, lr: float = 0.001, decay: float = 0.0, epsilon: float = 1e-7,
                 rho: float = 0.9) -> None:
        super().__init__(lr, decay)
        self.epsilon = _check("epsilon", epsilon, 0.0, low_open=True)
        self.rho = _check("rho", rho, 0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "decay": self.decay, "epsilon": self.epsilon,
                "rho": self.rho}

    def _update(self, backend, params, grads, state, scratch) -> None:
        backend.rmsprop_update(params, grads, state["cache"], self.current_learning_rate,
                               self.epsilon, self.rho, scratch)

    def _update_scheduled(self, backend, params, grads, state, schedule, scratch) -> None:
        backend.cache_update_scheduled(params, grads, state["cache"], schedule, self.epsilon,
                                       self.rho, scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        return 2, self.rho, self.epsilon


class Adam(Optimizer):
    """Momentum and RMSprop's cache, both bias-corrected for the early steps."""

    state_names = ("momentums", "cache")

    def __init__(self, lr: float = 0.001, decay: float = 0.0, epsilon: float = 1e-7,
                 beta_1: float = 0.9, beta_2: float = 0.999) -> None:
        super().__init__(lr, decay)
        self.epsilon = _check("epsilon", epsilon, 0.0, low_open=True)
        self.beta_1 = _check("beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _check("beta_2", beta_2, 0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "decay": self.decay, "epsilon": self.epsilon,
                "beta_1": self.beta_1, "beta_2": self.beta_2}

    def _update(self, backend, params, grads, state, scratch) -> None:
        backend.adam_update(params, grads, state["momentums"], state["cache"],
                            self.current_learning_rate, self.epsilon, self.beta_1, self.beta_2,
                            self.iterations + 1, scratch)

    def _update_scheduled(self, backend, params, grads, state, schedule, scratch) -> None:
        backend.adam_update_scheduled(params, grads, state["momentums"], state["cache"], schedule,
                                      self.epsilon, self.beta_1, self.beta_2, scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        return 3, 0.0, self.epsilon  # the betas come from the schedule
