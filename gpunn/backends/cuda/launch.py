"""Launching the kernels of kernels.cu: one method per kernel, holding its grid, block and
argument packing, so the CuPy backend's ops are one-line dispatches.

``Kernels`` takes a ``lookup(name, dtype, sizes=())`` that gives a kernel called as CuPy's
RawKernel is, ``kernel(grid, block, args, shared_mem=0)``: ``compiled(cupy)`` builds kernels.cu
through cupy.RawModule, lazily, on first use (the one-kernel trainer once more for each network's
sizes and dtype); tests/cuda_on_cpu gives the same kernels run on the CPU.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .. import schedule
from ..bf16 import BF16_BITS
from . import NVRTC_OPTIONS, name_expressions, source

THREADS = 256
MAX_BLOCKS = 8192  # grid-stride loops cover the rest
ONE_KERNEL_THREADS = 512  # kernels.cu's ONE_KERNEL_THREADS (its __launch_bounds__)
FOLDED_INPUTS = 3  # kernels.cu's FOLDED_INPUTS (dW1 summed with the hidden gradient up to this)
COLUMN_SUM_THREADS = 1024  # kernels.cu's COLUMN_SUM_THREADS (the column sums' blocks)
QUAD_COLUMNS, QUAD_ROWS = 32, 8  # kernels.cu's: bias_act_quads' block, column quads by rows
TRANSPOSE_TILE, TRANSPOSE_ROWS = 32, 8  # kernels.cu's: transpose's tile, and its block's rows
#: bias_act_quads' blocks at most: about one wave of them on an H100's or H200's 132 SMs (8 of
#: 256 threads a SM); the threads of a larger array walk down its rows.
QUAD_MAX_BLOCKS = 1024
#: Blocks a column sum is spread over where its columns allow: one 1024-thread block an SM at
#: these kernels' registers, and an H100 or H200 has 132 SMs.
COLUMN_SUM_BLOCKS = 128
NARROW_OUTPUTS = 16  # kernels.cu's NARROW_OUTPUTS: the most outputs the narrow kernels take
#: Warps narrow_forward wants at least, where the rows allow: 8 a block on each of 128 SMs.
NARROW_WARPS = 1024


def blocks(size: int) -> int:
    return max(1, min((size + THREADS - 1) // THREADS, MAX_BLOCKS))


def column_sum_block(k: int) -> tuple[int, int]:
    """The column sums' block for k columns: (columns, row stripes), the widest of 32, 16 and 8
    columns that still makes COLUMN_SUM_BLOCKS blocks (8 where none does). Both column-sum
    kernels take the same block for the same k, so they add in the same order."""
    width = next((w for w in (32, 16) if -(-k // w) >= COLUMN_SUM_BLOCKS), 8)
    return width, COLUMN_SUM_THREADS // width


def narrow_tile(k: int) -> int:
    """Rows of dw a warp of narrow_weight_grads takes for k outputs (kernels.cu's TILE)."""
    return 1 if k > 8 else 2 if k > 4 else 4 if k > 2 else 8 if k > 1 else 16


def narrow_rows(n: int) -> int:
    """Rows a warp of narrow_forward takes at once for n rows: 4 (each weight read serves four)
    where that still leaves NARROW_WARPS warps, else 2, else 1 (medium's 1024 rows: a warp each;
    four a warp made 32 blocks, for 132 SMs)."""
    return next((r for r in (4, 2) if n // r >= NARROW_WARPS), 1)


def warp_blocks(warps: int) -> int:
    """Blocks of THREADS for ``warps`` warps (grid-stride loops cover any beyond MAX_BLOCKS)."""
    return max(1, min(-(-warps * 32 // THREADS), MAX_BLOCKS))


def row_threads(k: int) -> int:
    """Threads per row of the softmax kernel: one warp for a few classes, more for many."""
    return 32 if k <= 64 else 128 if k <= 512 else 256


#: The trainer's template takes the network's sizes (N_IN, HIDDEN, K) in this kernels.cu; an
#: older one given to ``compiled`` (benchmarks/one_kernel_phases.py --compare) may not.
TRAINER_TAKES_SIZES = re.compile(r"template <typename T, int N_IN\b[^>]*>\s*__global__ void"
                                 r"(?:\s*__launch_bounds__\([^)]*\))?\s*train_in_one_kernel\s*\(")


def compiled(cupy: Any, options: tuple[str, ...] = (), code: str | None = None) -> Any:
    """A lookup over kernels.cu compiled by NVRTC through cupy.RawModule (on first use).
    Each kernel's function is looked up once and kept: get_function makes a new object and asks
    the driver (cuModuleGetFunction) every time, which launches paid for. ``options``: NVRTC
    options besides the backend's; ``code``: another source in place of kernels.cu (both for
    benchmarks/one_kernel_phases.py), of which only the kernels it defines are asked for (an
    older version lacks the newer ones).

    ``lookup(name, dtype, sizes)`` with the network's sizes (only the one-kernel trainer takes
    them) gives the kernel built for those sizes and that dtype, from a module of its own,
    compiled the first time a network of those sizes trains (about 0.6 s of NVRTC on a 2-core
    Xeon; CuPy keeps the result on disk). A source whose trainer does not take sizes gives its
    one kernel. ``lookup.module(sizes, dtype)`` gives the RawModule that kernel is in;
    ``lookup.module()`` the one with all the others."""
    text = source() if code is None else code
    takes_sizes = TRAINER_TAKES_SIZES.search(text) is not None
    modules: dict[tuple, Any] = {}
    functions: dict[tuple[str, Any, tuple[int, ...]], Any] = {}

    def type_name(dtype: Any) -> str:
        return "float" if np.dtype(dtype) == np.float32 else "double"

    def module(sizes: tuple[int, ...] = (), dtype: Any = None) -> Any:
        key = (tuple(sizes), type_name(dtype)) if sizes and takes_sizes else ()
        if key not in modules:
            if key:
                names = [f"train_in_one_kernel<{key[1]}, {', '.join(map(str, key[0]))}>"]
            else:
                names = name_expressions() if code is None else \
                    [e for e in name_expressions() if re.search(rf"\b{e.split('<')[0]}\s*\(", code)]
            modules[key] = cupy.RawModule(code=text, options=NVRTC_OPTIONS + tuple(options),
                                          name_expressions=names)
        return modules[key]

    def lookup(name: str, dtype: Any = None, sizes: tuple[int, ...] = ()) -> Any:
        sizes = tuple(sizes) if takes_sizes else ()
        key = (name, None if dtype is None else np.dtype(dtype), sizes)
        function = functions.get(key)
        if function is None:
            args = [] if dtype is None else [type_name(dtype), *map(str, sizes)]
            full = f"{name}<{', '.join(args)}>" if args else name
            function = functions[key] = module(sizes, dtype).get_function(full)
        return function

    lookup.module = module  # type: ignore[attr-defined]
    return lookup


def one_kernel_bytes(rows: int, sizes: tuple[int, int, int], dtype: Any) -> int:
    """Shared memory train_in_one_kernel needs for ``rows`` samples of Dense(n_in, hidden) ->
    ReLU -> Dense(hidden, k), ``sizes`` = (n_in, hidden, k) (the layout is in kernels.cu)."""
    n_in, hidden, k = sizes
    n_params = n_in * hidden + hidden + hidden * k + k
    scratch = ONE_KERNEL_THREADS * (n_in + 1 if n_in <= FOLDED_INPUTS else 1)
    padded_w2 = 4 * hidden if k <= 4 else 0  # W2's rows padded to four (unused with no warps)
    elements = rows * (n_in + ((hidden + 1) | 1) + k) + 4 * n_params + scratch + padded_w2
    return 8 * (64 + schedule.SIZE) + np.dtype(dtype).itemsize * elements  # doubles, then T


def _need_bf16_result(kernel: str, d16: Any) -> None:
    if d16 is None:
        raise ValueError(f"{kernel} with a bfloat16 ReLU output writes its result in bfloat16 "
                         "alone: d16 is needed")


class Kernels:
    """kernels.cu's kernels with their launch shapes and argument lists."""

    def __init__(self, lookup: Any, xp: Any) -> None:
        self.lookup = lookup
        self._no_totals = xp.zeros(2, dtype=np.float64)  # the kernel's totals when none are kept
        self._no_bf16 = xp.zeros(1, dtype=np.uint16)  # a bf16 output not asked for
        self._shared_opted_in: dict[int, int] = {}  # id(kernel) -> dynamic shared bytes asked for

    def bias_act(self, z: Any, biases: Any, relu: bool, z16: Any = None,
                 only16: bool = False) -> Any:
        """z = z + biases, then max(z, 0) when ``relu``; in place. ``z16`` (uint16, z's shape):
        the result rounded to bfloat16 as well, in the same pass; with ``only16``, there alone
        (z is left as it was: a hidden layer's output under precision "bf16")."""
        if only16 and z16 is None:
            raise ValueError("bias_act with only16 needs z16, the bfloat16 output")
        n, k = z.shape
        if z.dtype == np.float32 and k % 4 == 0:  # four columns a thread (kernels.cu)
            column_blocks = -(-(k // 4) // QUAD_COLUMNS)
            row_blocks = max(1, min(-(-n // QUAD_ROWS), QUAD_MAX_BLOCKS // column_blocks))
            self.lookup("bias_act_quads")(
                (column_blocks * row_blocks,), (QUAD_COLUMNS, QUAD_ROWS),
                (z, biases, np.int64(n), np.int32(k), np.int32(relu), *self._bf16_out(z16),
                 np.int32(not only16), np.int32(column_blocks)))
        else:
            self.lookup("bias_act", z.dtype)((blocks(z.size),), (THREADS,),
                                             (z, biases, np.int64(n), np.int32(k), np.int32(relu),
                                              *self._bf16_out(z16), np.int32(not only16)))
        return z16 if only16 else z

    def relu_backward(self, dvalues: Any, output: Any) -> Any:
        """dvalues = 0 where the ReLU's output was not positive; in place."""
        self.lookup("relu_backward", dvalues.dtype)((blocks(dvalues.size),), (THREADS,),
                                                    (dvalues, output, np.int64(dvalues.size)))
        return dvalues

    def _bf16_out(self, out16: Any) -> tuple[Any, np.int32]:
        """A kernel's optional bf16 output and its write flag (a placeholder when there is none:
        a kernel argument cannot be None)."""
        return (self._no_bf16, np.int32(0)) if out16 is None else (out16, np.int32(1))

    def column_sum(self, dvalues: Any, out: Any) -> Any:
        n, k = dvalues.shape
        width, stripes = column_sum_block(k)
        self.lookup("column_sum", dvalues.dtype)((-(-k // width),), (width, stripes),
                                                 (dvalues, out, np.int32(n), np.int32(k)))
        return out

    def relu_backward_column_sum(self, dvalues: Any, output: Any, sums: Any,
                                 d16: Any = None) -> Any:
        """relu_backward(dvalues, output), then column_sum(dvalues, sums), in one pass: the
        same bits as the two calls. ``d16``: the result rounded to bfloat16 as well, as for
        ``bias_act``. Where ``output`` is bfloat16 (a hidden layer's under precision "bf16"),
        the result goes to ``d16`` alone, and dvalues is only read; returns the result."""
        n, k = dvalues.shape
        width, stripes = column_sum_block(k)
        grid, block = (-(-k // width),), (width, stripes)
        if output.dtype == BF16_BITS:
            _need_bf16_result("relu_backward_column_sum", d16)
            self.lookup("relu_backward_column_sum_bf16", dvalues.dtype)(
                grid, block, (dvalues, output, sums, np.int32(n), np.int32(k), d16))
            return d16
        self.lookup("relu_backward_column_sum", dvalues.dtype)(
            grid, block, (dvalues, output, sums, np.int32(n), np.int32(k), *self._bf16_out(d16)))
        return dvalues

    def narrow_forward(self, inputs: Any, weights: Any, biases: Any, out: Any) -> Any:
        """out = inputs @ weights + biases for at most NARROW_OUTPUTS outputs, the operands float
        or (precision "bf16") bfloat16 bits; all C-contiguous."""
        n, m = inputs.shape
        k = weights.shape[1]
        name = "narrow_forward_bf16" if inputs.dtype == BF16_BITS else "narrow_forward"
        rows = narrow_rows(n)
        self.lookup(name, out.dtype)((warp_blocks(-(-n // rows)),), (THREADS,),
                                     (inputs, weights, biases, out, np.int32(n), np.int32(m),
                                      np.int32(k), np.int32(rows)))
        return out

    def narrow_weight_grads(self, inputs: Any, dz: Any, dvalues: Any, dweights: Any,
                            dbiases: Any) -> Any:
        """dweights = inputs.T @ dz for at most NARROW_OUTPUTS outputs (dz the GEMM's operand:
        dvalues, or under precision "bf16" its bfloat16 copy, as inputs is), and dbiases = the
        column sums of dvalues unless None (dvalues may be None then); all C-contiguous."""
        n, m = inputs.shape
        k = dweights.shape[1]
        name = "narrow_weight_grads_bf16" if inputs.dtype == BF16_BITS else "narrow_weight_grads"
        warps = -(-m // narrow_tile(k)) + (dbiases is not None)  # a warp's share each: no
        self.lookup(name, dweights.dtype)(  # grid-stride loop, so no cap on the blocks
            (-(-warps * 32 // THREADS),), (THREADS,),
            (inputs, dz, dweights if dvalues is None else dvalues, dweights,
             dweights if dbiases is None else dbiases, np.int32(n),
             np.int32(m), np.int32(k), np.int32(dbiases is not None)))
        return dweights

    def narrow_dinputs_relu_bgrad(self, dz: Any, weights: Any, out: Any, output: Any, sums: Any,
                                  d16: Any = None) -> Any:
        """out = dz @ weights.T for at most NARROW_OUTPUTS columns of dz, 0 where ``output`` is
        not positive; sums = its column sums; ``d16``: out rounded to bfloat16 as well. With
        bfloat16 operands (precision "bf16": the GEMM's copies of dz and weights), ``output`` is
        bfloat16 too and the result goes to ``d16`` alone (``out`` is not written). In
        relu_backward_column_sum's blocks; all C-contiguous. Returns the result."""
        n, m = output.shape
        k = weights.shape[1]
        width, stripes = column_sum_block(m)
        grid, block = (-(-m // width),), (width, stripes)
        if dz.dtype == BF16_BITS:
            _need_bf16_result("narrow_dinputs_relu_bgrad", d16)
            if output.dtype != BF16_BITS:
                raise ValueError("narrow_dinputs_relu_bgrad with bfloat16 operands needs the "
                                 f"ReLU's output in bfloat16 too; got {output.dtype}")
            self.lookup("narrow_dinputs_relu_bgrad_bf16", sums.dtype)(
                grid, block, (dz, weights, output, sums, np.int32(n), np.int32(m), np.int32(k),
                              d16))
            return d16
        self.lookup("narrow_dinputs_relu_bgrad", out.dtype)(
            grid, block, (dz, weights, out, output, sums, np.int32(n), np.int32(m), np.int32(k),
                          *self._bf16_out(d16)))
        return out

    def float_to_bf16(self, x: Any, out: Any) -> Any:
        """out (bfloat16 bits, uint16) = float32 x rounded to nearest even; both contiguous. A
        thread takes four values at a time where both are aligned for it."""
        self.lookup("float_to_bf16")((blocks((x.size + 3) // 4),), (THREADS,),
                                     (x, out, np.int64(x.size)))
        return out

    def transpose(self, x: Any, out: Any) -> Any:
        """out = x.T for float32 x of (n, k) and out of (k, n), both C-contiguous."""
        n, k = x.shape
        if x.dtype != np.float32 or out.dtype != np.float32 or out.shape != (k, n) \
                or not (x.flags.c_contiguous and out.flags.c_contiguous):
            raise ValueError(f"transpose takes C-contiguous float32 x and out of its transposed "
                             f"shape; got x {x.dtype} {x.shape} of strides {x.strides} and out "
                             f"{out.dtype} {out.shape} of strides {out.strides}")
        column_tiles = -(-k // TRANSPOSE_TILE)
        tiles = column_tiles * -(-n // TRANSPOSE_TILE)
        self.lookup("transpose")((max(1, min(tiles, MAX_BLOCKS)),), (TRANSPOSE_TILE, TRANSPOSE_ROWS),
                                 (x, out, np.int64(n), np.int32(k), np.int32(column_tiles),
                                  np.int64(tiles)))
        return out

    def hold_device(self, seconds: float) -> None:
        """Keep the device busy for ``seconds`` (one thread): what is queued next waits."""
        self.lookup("hold_device")((1,), (1,), (np.int64(seconds * 1e9),))

    def take_rows(self, x: Any, indices: Any, out: Any) -> Any:
        if not (x.flags.c_contiguous and out.flags.c_contiguous):  # the kernel reads whole rows
            raise ValueError(f"take_rows needs C-contiguous rows; got x of strides {x.strides} and "
                             f"out of strides {out.strides} (np.ascontiguousarray makes them)")
        rows, cols = out.shape
        if out.dtype == BF16_BITS:  # the rows rounded to bfloat16 on the way (float32 x)
            self.lookup("take_rows_bf16")((blocks(out.size),), (THREADS,),
                                          (x, indices, out, np.int64(rows), np.int32(cols)))
            return out
        self.lookup("take_rows", x.dtype)((blocks(out.size),), (THREADS,),
                                          (x, indices, out, np.int64(rows), np.int32(cols)))
        return out

    def softmax_cross_entropy(self, logits: Any, labels: Any, probs: Any, dlogits: Any,
                              losses: Any, totals: Any, dlogits16: Any = None) -> Any:
        """``dlogits16``: dlogits rounded to bfloat16 as well, as for ``bias_act``."""
        n, k = logits.shape
        self.lookup("softmax_cross_entropy", logits.dtype)(
            (n,), (row_threads(k),),
            (logits, labels, probs, probs if dlogits is None else dlogits, losses,
             self._no_totals if totals is None else totals, np.int32(n), np.int32(k),
             logits.dtype.type(1.0 / n), np.int32(dlogits is not None),
             np.int32(totals is not None), *self._bf16_out(dlogits16)))
        return losses

    def advance_schedule(self, schedule: Any) -> None:
        self.lookup("advance_schedule")((1,), (1,), (schedule,))

    def sgd_update(self, params: Any, grads: Any, momentums: Any, schedule: Any,
                   momentum: float) -> None:
        self.lookup("sgd_update", params.dtype)(
            (blocks(params.size),), (THREADS,),
            (params, grads, params if momentums is None else momentums, schedule,
             np.float64(momentum), np.int32(momentums is not None), np.int64(params.size)))

    def cache_update(self, params: Any, grads: Any, cache: Any, schedule: Any, epsilon: float,
                     rho: float) -> None:
        """Adagrad (rho < 0) or RMSprop."""
        self.lookup("cache_update", params.dtype)(
            (blocks(params.size),), (THREADS,),
            (params, grads, cache, schedule, np.float64(epsilon), np.float64(rho),
             np.int64(params.size)))

    def adam_update(self, params: Any, grads: Any, momentums: Any, cache: Any, schedule: Any,
                    epsilon: float, beta_1: float, beta_2: float) -> None:
        self.lookup("adam_update", params.dtype)(
            (blocks(params.size),), (THREADS,),
            (params, grads, momentums, cache, schedule, np.float64(epsilon), np.float64(beta_1),
             np.float64(beta_2), np.int64(params.size)))

    def train_in_one_kernel(self, X: Any, y: Any, params: Any, grads: Any, states: list[Any],
                            schedule: Any, totals: Any, epochs: int, rule: tuple[int, float, float],
                            outs: dict[str, Any]) -> None:
        rows, n_in = X.shape
        hidden, k = outs["hidden"].shape[1], outs["logits"].shape[1]
        sizes = (n_in, hidden, k)
        nbytes = one_kernel_bytes(rows, sizes, X.dtype)
        kernel = self.lookup("train_in_one_kernel", X.dtype, sizes)  # built for these sizes
        # Beyond 48 KiB is opted into, for each kernel (by id: the lookup keeps every kernel, and
        # whether CuPy's function objects hash is theirs to say).
        if self._shared_opted_in.get(id(kernel), 0) < nbytes:
            kernel.max_dynamic_shared_size_bytes = nbytes
            self._shared_opted_in[id(kernel)] = nbytes
        code, hyper, epsilon = rule
        state_1 = states[0] if states else params  # unused by the rules that keep no state
        state_2 = states[1] if len(states) > 1 else params
        kernel((1,), (ONE_KERNEL_THREADS,),
               (X, y, np.int32(rows), np.int32(n_in), np.int32(hidden), np.int32(k), params,
                grads, state_1, state_2, schedule, totals, np.int32(epochs), np.int32(code),
                np.float64(hyper), np.float64(epsilon), outs["hidden"], outs["dhidden"],
                outs["logits"], outs["probs"], outs["dlogits"], outs["losses"]),
               shared_mem=nbytes)
