"""The optimizer's device schedule and update-rule codes, named once for Python and CUDA.

A training step replayed from a CUDA graph cannot be handed new Python numbers, so the scalars
that change from step to step (the decayed learning rate, Adam's bias corrections, the step count)
live in a small float64 array on the device, which the step itself moves on. Its slots are named
here; ``cuda_defines()`` hands the same names and numbers to the CUDA sources (``SCHEDULE_LR_T``,
...), so Python, the reference ops and the kernels cannot disagree about where a value sits.
"""

from __future__ import annotations

# Slots of the schedule, in order.
ITERATIONS = 0  # steps taken so far (t)
LR = 1  # the starting learning rate
DECAY = 2  # lr_t = lr / (1 + decay * t)
BETA_1 = 3  # Adam's betas (0 for the other rules)
BETA_2 = 4
LR_T = 5  # the learning rate of the step being taken
CORRECTION_1 = 6  # Adam's 1 / (1 - beta_1^(t+1)) for that step
CORRECTION_2 = 7  # and 1 / (1 - beta_2^(t+1))
SLOTS = ("ITERATIONS", "LR", "DECAY", "BETA_1", "BETA_2", "LR_T", "CORRECTION_1", "CORRECTION_2")
SIZE = len(SLOTS)

# The update rules, as the one-kernel trainer takes them.
RULE_SGD = 0
RULE_SGD_MOMENTUM = 1
RULE_CACHE = 2  # Adagrad (rho < 0) and RMSprop
RULE_ADAM = 3
RULES = ("RULE_SGD", "RULE_SGD_MOMENTUM", "RULE_CACHE", "RULE_ADAM")


def start(iterations: int, lr: float, decay: float, beta_1: float = 0.0,
          beta_2: float = 0.0) -> list[float]:
    """A schedule's values before the step after ``iterations`` steps (the derived slots at 0)."""
    values = [0.0] * SIZE
    values[ITERATIONS], values[LR], values[DECAY] = float(iterations), float(lr), float(decay)
    values[BETA_1], values[BETA_2] = float(beta_1), float(beta_2)
    return values


def advance(schedule: list[float] | object) -> None:
    """Move ``schedule`` (a list or host array) on by one step, in place: the book's
    pre_update_params (lr_t = lr / (1 + decay * t)), Adam's corrections for step t + 1, then its
    post_update_params (t += 1). kernels.cu's ``advance`` does the same on the device."""
    iterations = float(schedule[ITERATIONS])
    step = iterations + 1
    schedule[LR_T] = float(schedule[LR]) / (1.0 + float(schedule[DECAY]) * iterations)
    schedule[CORRECTION_1] = 1.0 / (1.0 - float(schedule[BETA_1]) ** step)
    schedule[CORRECTION_2] = 1.0 / (1.0 - float(schedule[BETA_2]) ** step)
    schedule[ITERATIONS] = step


def cuda_defines() -> tuple[str, ...]:
    """The slot and rule names as compiler options (``-DSCHEDULE_LR_T=5``, ``-DRULE_ADAM=3``)."""
    slots = [f"-DSCHEDULE_{name}={i}" for i, name in enumerate(SLOTS)]
    rules = [f"-D{name}={i}" for i, name in enumerate(RULES)]
    return (*slots, f"-DSCHEDULE_SIZE={SIZE}", *rules)
