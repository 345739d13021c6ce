"""The one-kernel trainer on the CPU: Dense(n_in, hidden) -> ReLU -> Dense(hidden, k) with softmax
cross-entropy, ``epochs`` optimizer steps on one batch in one call of code compiled by numba. The
CPU sibling of kernels.cu's ``train_in_one_kernel``, with the same rules.

Why it is faster than NumPy for the book's network: a NumPy step is about twenty calls, each
a few microseconds of overhead around very little arithmetic (300 x 64 values), and the data
passes through memory between them. Here a whole epoch is three loops over the batch in one
compiled function. The trainer is written out for the network's sizes (``columns_source``),
each input and class a column of all the samples and each hidden unit's weights scalars, so the
inner loops run down the columns on vector registers: the logits summed one hidden unit at a
time, the softmax a sample at a time, then per hidden unit its ReLU again and its gradients
summed in registers, with nothing stored per sample. Measured on the book's float32 run, the
trainer alone: 0.36 s with plain loops over samples, 0.27 s per sample written out, 0.25 s over
columns, 0.13 s over columns with denormals flushed (2-core Xeon). Then on a 2-core AMD EPYC,
from 0.15-0.18 s to 0.09-0.10 s: the softmax's loop over samples on vector registers too, with
exp and log that the compiler inlines (jit_math.py) and no ZeroDivisionError test before each
division (ERROR_MODEL). What the last epoch leaves for the layers (``if last``) is written by
loops of their own, a column at a time: a step of the spiral's network (one epoch a call) took
24 us before, 18.5 us so.

That takes networks of up to ``COLUMNS_UP_TO`` inputs and classes together; wider ones take the
NumPy backend's steps, which BLAS makes as fast or faster there (the figures at
``COLUMNS_UP_TO``).

Denormal numbers are flushed to zero while the trainer runs (denormals.py says why: the book's
run makes some, and each costs a slow path on x86). Nothing else changes: values below 1.2e-38
in float32 (2.2e-308 in float64) are 0 inside the trainer, as they are in JAX on the CPU.

The sums over samples run in an order of their own (BLAS blocks them differently), and sums may
be reassociated to vectorise them (``REASSOCIATE``), so the numbers agree with the NumPy path's
to rounding, not bit for bit; a run gives the same bits every time. NaN and infinity keep their
meaning (no "fast" math that assumes them away), so a diverging run is caught as it is on the
NumPy path.

numba is optional (``pip install "gpunn[jit]"``); without it the NumPy backend takes its usual
steps and ``why_not()`` says so. It is imported when a trainer is first wanted
(numba_import.py), not when gpunn is.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import denormals, jit_cache, jit_math, numba_import
from . import schedule as slots

#: LLVM's fast-math flags allowed: reassociating sums (to vectorise them), fused multiply-adds,
#: and -0 treated as 0. Not "nnan"/"ninf": those would let the compiler drop NaN checks.
REASSOCIATE = {"reassoc", "contract", "nsz"}
#: What a division by zero gives: inf or NaN, as in NumPy (and so the NumPy steps, which the
#: trainer must match). numba's default, "python", raises ZeroDivisionError instead, and the test
#: it puts before every division keeps the loop around it off vector registers: the softmax's
#: loop over 300 samples took 10.3 us so with jit_math's exp and log, 1.3 us without (with the C
#: library's: 5.3 and 3.0 us; 2-core AMD EPYC, AVX-512).
ERROR_MODEL = "numpy"


def why_not() -> str | None:
    """None where the trainer can be compiled (numba imports: asking imports it), else why not."""
    return numba_import.why_not()


def train(X: np.ndarray, y: np.ndarray, params: np.ndarray, grads: np.ndarray,
          states: list[np.ndarray], schedule: Any, totals: np.ndarray, epochs: int,
          rule: tuple[int, float, float], outs: dict[str, np.ndarray]) -> None:
    """What ``Backend.train_in_one_kernel`` promises, for NumPy arrays (``schedule`` a list or
    array of schedule.py's slots, moved on in place)."""
    code, hyper, epsilon = rule
    sched = np.array(schedule, dtype=np.float64)
    state_1 = states[0] if states else params  # unused by the rules that keep no state
    state_2 = states[1] if len(states) > 1 else params
    compiled = trainer(X.shape[1], outs["logits"].shape[1])
    with denormals.flushed(flush_registers()):
        compiled(X, y.astype(np.int64, copy=False), params, grads, state_1, state_2, sched,
                 totals, epochs, code, hyper, epsilon, outs["hidden"], outs["dhidden"],
                 outs["logits"], outs["probs"], outs["dlogits"], outs["losses"].reshape(-1))
    schedule[:] = sched.tolist() if isinstance(schedule, list) else sched


#: Up to this many inputs and classes together a network's trainer is written out for it over
#: columns of samples (``columns_source``); the NumPy backend's why_not refuses wider ones. Past
#: 16 the columns' sums outgrow the registers (float32, 64 hidden units, 300 samples,
#: microseconds an epoch: 2 + 3 inputs and classes 13, 12 + 4 33, 2 + 14 43, but 6 + 12 107 and
#: 10 + 10 124). The wider ones had a trainer of their own that took each sample through the
#: whole step in turn; it was removed: against the NumPy steps (2-core Xeon, OpenBLAS SkylakeX on
#: 2 threads) it ran from 1.86x as fast (64 + 10, batches of 32) to 0.82x (784 + 10, batches of
#: 64), slower from about 2 million multiply-adds a step, and it compiled for 5 s in every
#: process. Within the limit, the written-out trainer was 1.06x (12 + 4, batches of 128) to 8.9x
#: (the book's 2 + 3, 300 samples) as fast as the NumPy steps, up to 30,000 samples a batch.
COLUMNS_UP_TO = 16

_trainers: dict[tuple[int, int], Any] = {}


def trainer(n_in: int, k: int) -> Any:
    """The compiled trainer for ``n_in`` inputs and ``k`` classes (numba compiles it on first
    use, once per dtype, and keeps what it compiled in jit_cache's folder for later runs)."""
    reason = why_not()
    if reason is not None:
        raise RuntimeError(f"the CPU one-kernel trainer {reason}")
    if n_in + k > COLUMNS_UP_TO:
        raise ValueError(f"the CPU one-kernel trainer takes up to {COLUMNS_UP_TO} inputs and "
                         f"classes together; got {n_in} + {k}")
    if (n_in, k) not in _trainers:
        _trainers[n_in, k] = _columns_trainer(n_in, k)
    return _trainers[n_in, k]


#: What a written-out trainer's module starts with: the names its source uses.
COLUMNS_IMPORTS = ("import numpy as np\n\n"
                   "from gpunn.backends import jit\n"
                   "from gpunn.backends.jit_math import exp_nonpositive, log_positive\n\n"
                   "advance, update = jit.advance.compiled, jit.update.compiled\n\n\n")


def _columns_trainer(n_in: int, k: int) -> Any:
    """The written-out trainer, compiled; from a file in the cache folder where there is one, so
    that numba keeps what it compiled for the next run (jit_cache.py), else in memory."""
    cached = _cached(f"columns_{n_in}x{k}", COLUMNS_IMPORTS + columns_source(n_in, k))
    return in_memory(n_in, k) if cached is None else njit(cached.train, cache=True)


def in_memory(n_in: int, k: int) -> Any:
    """The written-out trainer compiled in this process and kept nowhere: where there is no
    cache folder, and for a look at its code (numba shows none for code it loaded from its
    cache)."""
    namespace: dict[str, Any] = {}
    exec(compile(COLUMNS_IMPORTS + columns_source(n_in, k),
                 f"<gpunn.backends.jit columns {n_in}x{k}>", "exec"), namespace)
    return njit(namespace["train"])


@functools.cache
def flush_registers() -> tuple[Any, Any] | None:
    """denormals' functions that read and write the register (``REGISTERS``), compiled from a
    file in the cache folder, where numba keeps them for the next process; None where there is
    no cache folder (denormals compiles its own), or no flushing here."""
    if denormals.why_not() is not None:
        return None
    denormals.intrinsics()
    cached = _cached("mxcsr", denormals.REGISTERS)
    if cached is None:
        return None
    njit = numba_import.numba().njit
    return njit(cached.read, cache=True), njit(cached.write, cache=True)


def _cached(name: str, source: str) -> Any:
    """The module ``source`` makes, from its file in jit_cache's folder (numba keeps what it
    compiles from there for the next process); None where there is no folder to keep it in."""
    try:
        return jit_cache.module(name, source, _salt())
    except OSError:  # this file unreadable (gpunn in a zip): no salt, so no cache
        return None


def _salt() -> str:
    """What cached code depends on besides its own source: this file, jit_math.py and
    denormals.py (the helpers and intrinsics it calls) and the versions of numba and Python."""
    helpers = (Path(__file__).read_text(), Path(jit_math.__file__).read_text(),
               Path(denormals.__file__).read_text())
    return "\0".join((*helpers, numba_import.numba().__version__, sys.version))


def njit(function: Any, cache: bool = False) -> Any:
    """``function`` compiled by numba as the trainer and its helpers are: REASSOCIATE's fast-math
    flags, ERROR_MODEL, and the GIL let go while it runs (jit_math's exp and log taught to numba
    first)."""
    jit_math.register()
    return numba_import.numba().njit(fastmath=REASSOCIATE, error_model=ERROR_MODEL, nogil=True,
                                     cache=cache)(function)


def columns_source(n_in: int, k: int) -> str:
    """The trainer ``train`` (the arguments of ``train``'s above, ``rule`` unpacked) for ``n_in``
    inputs and ``k`` classes, written out: each input and class a column of all the samples
    (``x0``, ``z0``, ``d0``, ...), so every inner loop runs over the samples, which the compiler
    vectorises, and each hidden unit's weights are scalars for the whole batch. Per epoch: the
    logits summed over the hidden units one unit at a time; the softmax cross-entropy a sample at
    a time; then per hidden unit its ReLU recomputed and its gradients summed over the samples in
    scalars. For ``columns_source(2, 3)``, the book's network, the forward loop reads::

        for j in range(width):
            w0 = W1[0, j]; w1 = W1[1, j]; bj = b1[j]
            v0 = W2[j, 0]; v1 = W2[j, 1]; v2 = W2[j, 2]
            for s in range(n):
                a = bj + x0[s] * w0 + x1[s] * w1
                if a < zero:  # a NaN goes through, as np.maximum lets it
                    a = zero
                z0[s] += a * v0
                ...
    """
    xs, cs = range(n_in), range(k)

    def each(template: str, over: range, sep: str = "; ") -> str:
        return sep.join(template.format(i=i) for i in over)

    def unit(indent: str, w2: str = "W2[j, {i}]") -> str:
        """A hidden unit's weights as scalars: w (from each input), bj and v (to each class)."""
        return (f"{indent}{each('w{i} = W1[{i}, j]', xs)}; bj = b1[j]\n"
                f"{indent}{each('v{i} = ' + w2, cs)}\n")
    def relu(indent: str) -> str:
        return (f"{indent}a = bj" + each(" + x{i}[s] * w{i}", xs, "") + "\n"
                f"{indent}if a < zero:  # a NaN goes through, as np.maximum lets it\n"
                f"{indent}    a = zero\n")

    def gradient(indent: str) -> str:
        return (f"{indent}g = zero" + each(" + d{i}[s] * v{i}", cs, "") + "\n"
                f"{indent}if not a > zero:\n"
                f"{indent}    g = zero\n")

    def softmax(indent: str) -> str:
        """A sample's logits (l), probabilities (p), label and clipped loss: the label's
        probability picked by comparisons (the columns are scalars, not an array), exp and log
        from jit_math, which the compiler inlines, so the loop over samples runs on vector
        registers."""
        pick = "".join(f"{'if' if c == 0 else 'elif'} label == {c}:\n    p_true = p{c}\n"
                       for c in cs[:-1])
        pick += f"else:\n    p_true = p{k - 1}\n" if k > 1 else "p_true = p0\n"
        lines = (f"{each('l{i} = z{i}[s] + b2[{i}]', cs)}\n"
                 "best = 0\n"
                 "top = l0\n"
                 + "".join(f"if l{c} > top:\n    best = {c}\n    top = l{c}\n" for c in cs[1:])
                 + f"{each('p{i} = exp_nonpositive(l{i} - top)', cs)}\n"
                 f"total = zero{each(' + p{i}', cs, '')}\n"
                 f"{each('p{i} = p{i} / total', cs)}\n"
                 "label = y[s]\n"
                 + pick
                 + "if p_true < clip_low:  # clipped (a NaN stays one)\n"
                 "    p_true = clip_low\n"
                 "elif p_true > clip_high:\n"
                 "    p_true = clip_high\n"
                 "loss = -log_positive(p_true)\n")
        return "".join(indent + line + "\n" for line in lines.splitlines())

    outer, inner, record = " " * 12, " " * 16, " " * 20
    return f"""\
def train(X, y, params, grads, state_1, state_2, schedule, totals, epochs, code, hyper,
          epsilon, hidden, dhidden, logits, probs, dlogits, losses):
    n = X.shape[0]
    width = hidden.shape[1]
    o1 = {n_in} * width
    o2 = o1 + width
    o3 = o2 + width * {k}
    W1, b1 = params[:o1].reshape({n_in}, width), params[o1:o2]
    W2, b2 = params[o2:o3].reshape(width, {k}), params[o3:]
    dW1, db1 = grads[:o1].reshape({n_in}, width), grads[o1:o2]
    dW2, db2 = grads[o2:o3].reshape(width, {k}), grads[o3:]
    typed = np.empty(5, X.dtype)  # constants in the model's dtype: 0, 1, 1 / n and the clip
    typed[0], typed[1], typed[2], typed[3], typed[4] = 0.0, 1.0, 1.0 / n, 1e-7, 1 - 1e-7
    zero, one, inv_n, clip_low, clip_high = typed[0], typed[1], typed[2], typed[3], typed[4]
    scalars = np.empty(8, X.dtype)  # the rule's, per epoch
    # Columns of their own, which the compiler knows alias nothing.
{each("    x{i} = np.empty(n, X.dtype)", xs, chr(10))}
{each("    z{i} = np.empty(n, X.dtype)", cs, chr(10))}
{each("    d{i} = np.empty(n, X.dtype)", cs, chr(10))}
{each("    logit{i} = np.empty(n, X.dtype); prob{i} = np.empty(n, X.dtype)", cs, chr(10))}
    loss_of = np.empty(n, X.dtype)
    for s in range(n):
        {each("x{i}[s] = X[s, {i}]", xs)}
    for epoch in range(epochs):
        last = epoch == epochs - 1
        for s in range(n):
            {each("z{i}[s] = zero", cs)}
        for j in range(width):
{unit(outer)}            for s in range(n):
{relu(inner)}{each("                z{i}[s] += a * v{i}", cs, chr(10))}
        loss_sum = 0.0
        correct = 0
        for s in range(n):
{softmax(outer)}\
            loss_sum += loss
            correct += best == label
{each("            d{i}[s] = (p{i} - (one if label == {i} else zero)) * inv_n", cs, chr(10))}
        if last:  # what the loss and the output layer hold after the step: in a loop of
            # its own (stores the loop above might skip would keep it off vector registers),
            # into columns (the rows' stores, a class apart, would too), then into the rows
            for s in range(n):
{softmax(inner)}\
                loss_of[s] = loss
{each("                logit{i}[s] = l{i}; prob{i}[s] = p{i}", cs, chr(10))}
            for s in range(n):
                losses[s] = loss_of[s]
{each("                logits[s, {i}] = logit{i}[s]; probs[s, {i}] = prob{i}[s]", cs, chr(10))}
{each("                dlogits[s, {i}] = d{i}[s]", cs, chr(10))}
        {each("t{i} = zero", cs)}
        for s in range(n):
            {each("t{i} += d{i}[s]", cs)}
        {each("db2[{i}] = t{i}", cs)}
        for j in range(width):
{unit(outer)}            {each("t{i} = zero", cs)}; tb = zero; {each("u{i} = zero", xs)}
            for s in range(n):
{relu(inner)}{each("                t{i} += a * d{i}[s]", cs, chr(10))}
{gradient(inner)}                tb += g
{each("                u{i} += x{i}[s] * g", xs, chr(10))}
            {each("dW2[j, {i}] = t{i}", cs)}; db1[j] = tb; {each("dW1[{i}, j] = u{i}", xs)}
        if last:  # what the layers hold after the step: each sample's hidden row and its
            # gradient, the same sums again, written along the rows (W2 by columns for that)
            W2T = np.ascontiguousarray(W2.T)
            for s in range(n):
                for j in range(width):
{unit(record, 'W2T[{i}, j]')}{relu(record)}{gradient(record)}                    hidden[s, j] = a
                    dhidden[s, j] = g
        totals[epoch, 0] += loss_sum
        totals[epoch, 1] += correct
        advance(schedule)
        update(params, grads, state_1, state_2, schedule, code, hyper, epsilon, scalars)
"""
def advance(schedule):
    """schedule.advance, compiled."""
    iterations = schedule[slots.ITERATIONS]
    step = iterations + 1.0
    schedule[slots.LR_T] = schedule[slots.LR] / (1.0 + schedule[slots.DECAY] * iterations)
    schedule[slots.CORRECTION_1] = 1.0 / (1.0 - schedule[slots.BETA_1] ** step)
    schedule[slots.CORRECTION_2] = 1.0 / (1.0 - schedule[slots.BETA_2] ** step)
    schedule[slots.ITERATIONS] = step


def update(params, grads, state_1, state_2, schedule, code, hyper, epsilon, scalars):
    """One rule over every parameter, as kernels.cu's rules compute it: in the model's dtype
    (``scalars``, of that dtype, converts the float64 settings as the kernels' casts do)."""
    scalars[0] = schedule[slots.LR_T]
    lr = scalars[0]
    if code == slots.RULE_SGD:
        for q in range(params.size):
            params[q] -= lr * grads[q]
    elif code == slots.RULE_SGD_MOMENTUM:
        scalars[1] = hyper
        momentum = scalars[1]
        for q in range(params.size):
            u = momentum * state_1[q] - lr * grads[q]
            state_1[q] = u
            params[q] += u
    elif code == slots.RULE_CACHE:
        scalars[1], scalars[2], scalars[3] = hyper, 1 - hyper, epsilon
        rho, rest, eps = scalars[1], scalars[2], scalars[3]
        for q in range(params.size):
            g = grads[q]
            c = state_1[q] + g * g if hyper < 0 else rho * state_1[q] + rest * g * g
            state_1[q] = c
            params[q] -= lr * g / (math.sqrt(c) + eps)
    else:
        beta_1, beta_2 = schedule[slots.BETA_1], schedule[slots.BETA_2]
        scalars[1], scalars[2], scalars[3], scalars[4] = beta_1, 1 - beta_1, beta_2, 1 - beta_2
        scalars[5], scalars[6] = schedule[slots.CORRECTION_1], schedule[slots.CORRECTION_2]
        scalars[7] = epsilon
        b1, r1, b2, r2 = scalars[1], scalars[2], scalars[3], scalars[4]
        correct_1, correct_2, eps = scalars[5], scalars[6], scalars[7]
        for q in range(params.size):
            g = grads[q]
            m = b1 * state_1[q] + r1 * g
            v = b2 * state_2[q] + r2 * g * g
            state_1[q] = m
            state_2[q] = v
            params[q] -= lr * (m * correct_1) / (math.sqrt(v * correct_2) + eps)


# Called from compiled code, so compiled too (on first use; the trainer takes ``.compiled``).
advance = numba_import.OnFirstCall(advance, njit)
update = numba_import.OnFirstCall(update, njit)
