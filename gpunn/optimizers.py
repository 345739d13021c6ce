"""Optimizers with the book's update rules and learning-rate decay lr / (1 + decay * t), t being
the number of steps taken so far (from 0).

In a compiled model all parameters live in one flat buffer, so a step updates every weight and
bias with one backend call. There is one update API: ``update(params, grads)`` is a step's device
work (it moves the optimizer's device schedule on, then applies the rule reading the decayed
learning rate and Adam's corrections from it) and ``count_step()`` its host bookkeeping
(``iterations``, ``current_learning_rate``); ``step`` is both. A CUDA graph records ``update`` and
each replay is followed by ``count_step``, as torch.optim.Adam(capturable=True) keeps its step on
the device. The book's per-layer calls (``pre_update_params``, ``update_params(layer)``,
``post_update_params``) apply the same rules.
"""

from __future__ import annotations

from typing import Any

from . import checks
from .backends import Backend
from .backends import schedule as slots


def _check(name: str, value: Any, low: float, high: float | None = None,
           low_open: bool = False) -> float:
    return checks.real_number(value, name, low, high, low_open=low_open)


class Optimizer:
    """Shared machinery: decay, the step counter, flat state buffers and the device schedule,
    the state dict, the book's calls. The learning rate is ``lr`` or, in the book's words,
    ``learning_rate`` (one of them; each rule has its default)."""

    #: Names of the per-parameter state buffers this rule keeps (each shaped like the params).
    state_names: tuple[str, ...] = ()
    #: The learning rate when none is given.
    default_lr = 1.0

    def __init__(self, lr: float | None = None, decay: float = 0.0,
                 learning_rate: float | None = None) -> None:
        if lr is not None and learning_rate is not None:
            raise ValueError(f"give the learning rate once, as lr or as learning_rate; got "
                             f"lr={lr!r} and learning_rate={learning_rate!r}")
        lr = learning_rate if learning_rate is not None else self.default_lr if lr is None else lr
        self.learning_rate = _check("lr", lr, 0.0, low_open=True)
        self.decay = _check("decay", decay, 0.0)
        self.current_learning_rate = self.learning_rate
        self.iterations = 0
        self.backend: Backend | None = None
        self.state: dict[str, Any] = {}  # flat state buffers, allocated by ``build``
        self.schedule: Any = None  # the device schedule (backends/schedule.py's slots)
        self.owner: Any = None  # a weak reference to the model compiled with it
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

    def __getstate__(self) -> dict[str, Any]:
        """For pickle and copy.deepcopy: the rule and where it stands, not its buffers (a model
        pickles its optimizer's state through its state dict)."""
        return {**self.__dict__, "backend": None, "state": {}, "schedule": None, "_scratch": None,
                "owner": None}

    # ---- flat buffers (a compiled model) ---------------------------------------------------

    def build(self, backend: Backend, size: int, dtype: Any) -> None:
        """Zeroed state buffers for ``size`` parameters on ``backend``, the step counter at 0."""
        self.backend = backend
        self.state = {name: backend.zeros((size,), dtype) for name in self.state_names}
        self._scratch = backend.empty((size,), dtype)
        self.iterations = 0
        self.current_learning_rate = self.learning_rate
        self.schedule = backend.new_schedule(self.schedule_start())

    def schedule_start(self) -> list[float]:
        """The device schedule's values before the next step (see backends/schedule.py)."""
        return slots.start(self.iterations, self.learning_rate, self.decay,
                           getattr(self, "beta_1", 0.0), getattr(self, "beta_2", 0.0))

    def sync_schedule(self) -> None:
        """Write the host's step count and hyper-parameters into the device schedule, in place
        (recorded graphs keep reading it)."""
        self.schedule[:] = self.backend.new_schedule(self.schedule_start())

    def update(self, params: Any, grads: Any) -> None:
        """A step's device work: the schedule moved on one step, then the rule applied to every
        parameter. Nothing is read back, so it can be captured into a CUDA graph."""
        self.backend.advance_schedule(self.schedule)
        self._apply(self.backend, params, grads, self.state, self.schedule, self._scratch)

    def count_step(self) -> None:
        """A step's host bookkeeping, as the book's pre_ and post_update_params do it."""
        self.pre_update_params()
        self.post_update_params()

    def step(self, params: Any, grads: Any) -> None:
        """One update of every parameter from its gradient, decay included: ``update`` and
        ``count_step``, written out (this is the hot path of eager training)."""
        self.backend.advance_schedule(self.schedule)
        self._apply(self.backend, params, grads, self.state, self.schedule, self._scratch)
        self.pre_update_params()
        self.iterations += 1

    def kernel_rule(self) -> tuple[int, float, float]:
        """(rule code, hyper-parameter, epsilon) as the one-kernel trainer (``train_in_one_kernel``
        of kernels.cu) takes them; its state buffers are ``state_names`` in order."""
        raise NotImplementedError

    # ---- state -----------------------------------------------------------------------------

    def state_dict(self, host: bool = True) -> dict[str, Any]:
        """State buffers (NumPy copies when ``host``, else device copies), step count and
        learning rate: what ``load_state_dict`` takes back."""
        copy = self.backend.to_numpy if host else (lambda a: a.copy())
        return {"state": {name: copy(values) for name, values in self.state.items()},
                "iterations": self.iterations,
                "current_learning_rate": self.current_learning_rate}

    def check_state_dict(self, state: dict[str, Any], where: str = "the state") -> None:
        """Raise ValueError unless ``state`` fits this optimizer's buffers (nothing is written)."""
        buffers = state.get("state", {})
        missing = [name for name in self.state if name not in buffers]
        if missing:
            raise ValueError(f"{where} lacks the optimizer state {missing}")
        for name, mine in self.state.items():
            if tuple(buffers[name].shape) != tuple(mine.shape):
                raise ValueError(f"{where}: the optimizer state {name!r} has shape "
                                 f"{tuple(buffers[name].shape)}; the model needs {tuple(mine.shape)}")
        for key in ("iterations", "current_learning_rate"):
            if key not in state:
                raise ValueError(f"{where} lacks the optimizer's {key}")
        checks.whole_number(state["iterations"], f"{where}: the optimizer's iterations", 0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put ``state`` (from ``state_dict``, on any backend) into the buffers in place, after
        checking all of it; the device schedule follows the step count."""
        self.check_state_dict(state)
        for name, values in state["state"].items():
            if name in self.state:
                self.state[name][...] = self.backend.asarray(values, dtype=self.state[name].dtype)
        self.iterations = int(state["iterations"])
        # This optimizer's hyper-parameters hold, not the ones the state was made with: the
        # learning rate of the last step, as pre_update_params gave it.
        self.current_learning_rate = self.learning_rate / (
            1.0 + self.decay * max(self.iterations - 1, 0))
        self.sync_schedule()

    # ---- the book's calls ------------------------------------------------------------------

    def pre_update_params(self) -> None:
        """Decay the learning rate: lr / (1 + decay * iterations) (lr itself without decay)."""
        self.current_learning_rate = self.learning_rate / (1.0 + self.decay * self.iterations)

    def update_params(self, layer: Any) -> None:
        """Update one layer's weights and biases, keeping state on the layer as the book does."""
        backend = layer.backend
        values = self.schedule_start()
        slots.advance(values)  # this step's lr_t and corrections, as ``update`` would have them
        schedule = backend.new_schedule(values)
        for kind in ("weight", "bias"):
            param = getattr(layer, "weights" if kind == "weight" else "biases")
            grad = getattr(layer, "dweights" if kind == "weight" else "dbiases")
            state = {}
            for name in self.state_names:
                attr = f"{kind}_{name}"  # the book's weight_momentums, bias_cache, ...
                if getattr(layer, attr, None) is None:
                    setattr(layer, attr, backend.zeros(param.shape, param.dtype))
                state[name] = getattr(layer, attr)
            self._apply(backend, param, grad, state, schedule, backend.empty(param.shape, param.dtype))

    def post_update_params(self) -> None:
        self.iterations += 1

    def _apply(self, backend: Backend, params: Any, grads: Any, state: dict[str, Any],
               schedule: Any, scratch: Any) -> None:
        """The rule, on ``params`` with ``grads``, reading this step's scalars from ``schedule``."""
        raise NotImplementedError


class SGD(Optimizer):
    """w -= lr * g; with momentum, u = momentum * u - lr * g, then w += u."""

    def __init__(self, lr: float | None = None, decay: float = 0.0, momentum: float = 0.0, *,
                 learning_rate: float | None = None) -> None:
        super().__init__(lr, decay, learning_rate)
        self.momentum = _check("momentum", momentum, 0.0, 1.0)
        self.state_names = ("momentums",) if self.momentum else ()

    def config(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "decay": self.decay, "momentum": self.momentum}

    def _apply(self, backend, params, grads, state, schedule, scratch) -> None:
        backend.sgd_update(params, grads, state.get("momentums"), schedule, self.momentum, scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        return (slots.RULE_SGD_MOMENTUM if self.momentum else slots.RULE_SGD), self.momentum, 0.0


class Adagrad(Optimizer):
    """cache += g^2; w -= lr * g / (sqrt(cache) + epsilon)."""

    state_names = ("cache",)

    def __init__(self, lr: float | None = None, decay: float = 0.0, epsilon: float = 1e-7, *,
                 learning_rate: float | None = None) -> None:
        super().__init__(lr, decay, learning_rate)
        self.epsilon = _check("epsilon", epsilon, 0.0, low_open=True)

    def config(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "decay": self.decay, "epsilon": self.epsilon}

    def _apply(self, backend, params, grads, state, schedule, scratch) -> None:
        backend.adagrad_update(params, grads, state["cache"], schedule, self.epsilon, scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        return slots.RULE_CACHE, -1.0, self.epsilon  # rho < 0: Adagrad's running sum


class RMSprop(Optimizer):
    """cache = rho * cache + (1 - rho) * g^2; w -= lr * g / (sqrt(cache) + epsilon)."""

    state_names = ("cache",)
    default_lr = 0.001

    def __init__(self, lr: float | None = None, decay: float = 0.0, epsilon: float = 1e-7,
                 rho: float = 0.9, *, learning_rate: float | None = None) -> None:
        super().__init__(lr, decay, learning_rate)
        self.epsilon = _check("epsilon", epsilon, 0.0, low_open=True)
        self.rho = _check("rho", rho, 0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "decay": self.decay, "epsilon": self.epsilon,
                "rho": self.rho}

    def _apply(self, backend, params, grads, state, schedule, scratch) -> None:
        backend.rmsprop_update(params, grads, state["cache"], schedule, self.epsilon, self.rho,
                               scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        return slots.RULE_CACHE, self.rho, self.epsilon


class Adam(Optimizer):
    """Momentum and RMSprop's cache, both bias-corrected for the early steps."""

    state_names = ("momentums", "cache")
    default_lr = 0.001

    def __init__(self, lr: float | None = None, decay: float = 0.0, epsilon: float = 1e-7,
                 beta_1: float = 0.9, beta_2: float = 0.999, *,
                 learning_rate: float | None = None) -> None:
        super().__init__(lr, decay, learning_rate)
        self.epsilon = _check("epsilon", epsilon, 0.0, low_open=True)
        self.beta_1 = _check("beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _check("beta_2", beta_2, 0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "decay": self.decay, "epsilon": self.epsilon,
                "beta_1": self.beta_1, "beta_2": self.beta_2}

    def _apply(self, backend, params, grads, state, schedule, scratch) -> None:
        backend.adam_update(params, grads, state["momentums"], state["cache"], schedule,
                            self.epsilon, self.beta_1, self.beta_2, scratch)

    def kernel_rule(self) -> tuple[int, float, float]:
        return slots.RULE_ADAM, 0.0, self.epsilon  # the betas come from the schedule
