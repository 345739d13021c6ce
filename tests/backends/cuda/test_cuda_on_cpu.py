"""The CuPy backend's training, with its CUDA kernels run on the CPU (tests/cuda_on_cpu: kernels.cu
compiled with g++, a fiber per CUDA thread taking turns at the barriers of __syncthreads and warp
shuffles, shared memory poisoned with NaN). What this shows without a GPU: the kernels compute the
planned step, the backend launches them with the arguments their signatures ask for, and the
one-block trainer trains as the planned steps do. What it cannot show: GPU timing,
cuBLAS/cuBLASLt, CUDA graphs, and races that only a GPU's scheduling would expose (test_gpu.py
covers those on a device)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import test_book
from cuda_on_cpu.emulator import SIZED_TRAINERS, build, emulated_backend
from support.backends import OneKernelNumpy
from support.training import OPTIMIZERS, made_steps

import gpunn as nn
from gpunn.backends import schedule as slots
from gpunn.backends.cuda import launch
from gpunn.cli import gpu_paths
from gpunn.training import steps

RULES = {"sgd": ((slots.RULE_SGD, 0.0, 0.0), 0, (0.5, 1e-3)),
         "momentum": ((slots.RULE_SGD_MOMENTUM, 0.9, 0.0), 1, (0.5, 1e-3)),
         "adagrad": ((slots.RULE_CACHE, -1.0, 1e-7), 1, (0.3, 1e-3)),
         "rmsprop": ((slots.RULE_CACHE, 0.9, 1e-7), 1, (0.01, 1e-3)),
         "adam": ((slots.RULE_ADAM, 0.0, 1e-7), 2, (0.05, 5e-7))}


def trainer_start(rule_name, dtype, n, sizes, rng):
    """What a launch of the one-kernel trainer starts from, 3 steps into training with
    ``rule_name``: (X, y, params, states, schedule, rule)."""
    (code, hyper, epsilon), n_states, (lr, decay) = RULES[rule_name]
    n_in, hidden, k = sizes
    n_params = n_in * hidden + hidden + hidden * k + k
    X = rng.standard_normal((n, n_in)).astype(dtype)
    y = rng.integers(0, k, n).astype(np.int64)
    params = (rng.standard_normal(n_params) * 0.5).astype(dtype)
    states = [np.abs(rng.standard_normal(n_params)).astype(dtype) * 0.1 for _ in range(n_states)]
    return X, y, params, states, np.array(slots.start(3, lr, decay, 0.9, 0.999)), (code, hyper, epsilon)


def run_trainer(trainer, start, sizes, epochs):
    """``trainer.train_in_one_kernel`` from a copy of ``start`` for ``epochs``: (params, states,
    grads, schedule, totals, outs), what it wrote (NaN where it wrote nothing)."""
    X, y, params, states, schedule, rule = start
    n, (_, hidden, k) = len(y), sizes
    p, s, sched = params.copy(), [a.copy() for a in states], schedule.copy()
    grads, totals = np.full_like(params, np.nan), np.zeros((epochs, 2))
    shapes = {"hidden": (n, hidden), "dhidden": (n, hidden), "logits": (n, k), "probs": (n, k),
              "dlogits": (n, k), "losses": (n,)}
    outs = {name: np.full(shape, np.nan, X.dtype) for name, shape in shapes.items()}
    trainer.train_in_one_kernel(X, y, p, grads, s, sched, totals, epochs, rule, outs)
    return p, s, grads, sched, totals, outs


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, sizes", [(37, (2, 9, 3)), (5, (3, 40, 2)), (20, (3, 200, 4)),
                                      (300, (2, 64, 3)), (6, (2, 600, 3)), (30, (5, 24, 3)),
                                      (4, (4, 530, 2)), (25, (2, 20, 6)), (40, (3, 12, 10))])
def test_one_kernel_trainer_follows_the_planned_step(emulated, rule_name, dtype, n, sizes, rng):
    """train_in_one_kernel (512 threads) against its NumPy port, from a state 3 steps in. The sizes
    cover partial sums split over row stripes, stripes clamped to few rows, more outputs
    than threads, columns shared by uneven numbers of threads (hidden 9, 40, 200), a layer
    wider than the block (hidden 600, 530: a thread takes several columns), and dW1 summed in
    the hidden gradient's pass (up to FOLDED_INPUTS inputs) or on its own (5 and 4 inputs);
    the hidden layer by warps (hidden 9, 40, 64, 20, 12: the last warp's columns past H's for
    40) or a thread a column (200, 600, and 5 or 4 inputs); and a row's logits kept for its
    softmax (up to 4 classes) or written for a pass of their own (6 and 10 classes: four a
    thread, two in the last)."""
    assert_follows_the_numpy_port(emulated, trainer_start(rule_name, dtype, n, sizes, rng), sizes)


def assert_follows_the_numpy_port(trainer, start, sizes):
    """6 epochs of ``trainer`` from ``start`` give what its NumPy port gives, to the dtype's
    tolerance (sums in another order)."""
    runs = [run_trainer(each, start, sizes, 6) for each in (trainer, OneKernelNumpy())]
    (p, s, g, sched, totals, outs), (p0, s0, g0, sched0, totals0, outs0) = runs
    float64 = p.dtype == np.float64
    tol = {"rtol": 1e-10, "atol": 1e-12} if float64 else {"rtol": 2e-4, "atol": 1e-5}
    for a, b in zip([p, g, *s], [p0, g0, *s0]):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_array_equal(sched, sched0)  # the same doubles in the same order
    np.testing.assert_allclose(totals[:, 0], totals0[:, 0], rtol=1e-10 if float64 else 1e-5)
    np.testing.assert_array_equal(totals[:, 1], totals0[:, 1])
    for name in outs:
        np.testing.assert_allclose(outs[name], outs0[name], err_msg=name, **tol)


@pytest.fixture(scope="module")
def a_thread_a_column(tmp_path_factory):
    """The CuPy backend on the CPU with kernels.cu built with -DONE_KERNEL_WARPS=0, as
    benchmarks/one_kernel_phases.py times it: no layer of the one-kernel trainer by warps."""
    lib = build(tmp_path_factory.mktemp("a_thread_a_column"), ("-DONE_KERNEL_WARPS=0",))
    if isinstance(lib, str):
        pytest.skip(lib)
    return emulated_backend(lib)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, sizes", [(300, (2, 64, 3)), (5, (3, 40, 2))])
def test_the_trainer_built_with_no_warps_follows_the_planned_step_too(a_thread_a_column, emulated,
                                                                      dtype, n, sizes, rng):
    """What one_kernel_phases.py times the warps against, a thread a column and the logits
    through shared memory, also trains as the NumPy port (sizes the warps would take); and it is
    another build: its sums, in another order, part from the warps' in the last bits."""
    start = trainer_start("adam", dtype, n, sizes, rng)
    assert_follows_the_numpy_port(a_thread_a_column, start, sizes)
    by_columns, by_warps = (run_trainer(each, start, sizes, 6)[0] for each in (a_thread_a_column, emulated))
    assert not np.array_equal(by_columns, by_warps)


@pytest.mark.parametrize("rule_name", ["momentum", "adam"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", SIZED_TRAINERS)
def test_the_trainer_built_for_a_networks_sizes_gives_the_bits_of_the_one_built_for_none(
        emulated, rule_name, dtype, sizes, rng):
    """The backend launches train_in_one_kernel built for the network's sizes (its loops over
    inputs and classes unrolled); built for none, the sizes are read at run time. The same
    arithmetic in the same order: every output the same bits, in 11 epochs over 37 rows (6 for
    a hidden layer wider than the block: its shared memory)."""
    start = trainer_start(rule_name, dtype, 6 if sizes[1] > launch.ONE_KERNEL_THREADS else 37,
                          sizes, rng)
    asked, runs = [], []
    for built_for in (sizes, ()):
        def lookup(name, dtype=None, sizes=(), built_for=built_for):
            asked.append(tuple(sizes))
            return emulated.kernels.lookup(name, dtype, built_for)

        p, s, grads, sched, totals, outs = run_trainer(launch.Kernels(lookup, np), start, sizes, 11)
        runs.append([p, grads, *s, sched, totals, *outs.values()])
    assert asked == [sizes, sizes]  # the launch asks for the kernel built for its sizes
    assert emulated.kernels.lookup("train_in_one_kernel", dtype, sizes) is not \
        emulated.kernels.lookup("train_in_one_kernel", dtype)
    for got, want in zip(*runs):
        np.testing.assert_array_equal(got, want)


def train(backend, make_opt, batch_size, epochs, one_kernel=False):
    X, y = nn.datasets.spiral_data(samples=40, classes=3, seed=0)  # 120 rows
    model = nn.Sequential([nn.Dense(2, 16, init="he", seed=1), nn.ReLU(), nn.Dense(16, 3, seed=3)])
    model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend=backend, dtype="float64")
    model.backend.one_kernel_trainer = one_kernel
    history = model.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0)
    return model, history.history


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
@pytest.mark.parametrize("batch_size, one_kernel", [(None, False), (50, False), (None, True),
                                                   (50, True)])
def test_cupy_backend_trains_as_numpy(emulated, make_opt, batch_size, one_kernel):
    """fit on the CuPy backend (planned steps, eager: no graphs here) equals fit on NumPy in
    float64, within summation-order differences; with the one-block trainer too."""
    # The one-kernel trainer: launches of 64 and 6 epochs. Emulated, the planned steps are slow
    # (a fiber per CUDA thread, a block at a time), so they run fewer epochs.
    epochs = 2 if batch_size else 70 if one_kernel else 6
    cupy_model, cupy_history = train(emulated, make_opt, batch_size, epochs, one_kernel)
    numpy_model, numpy_history = train("numpy", make_opt, batch_size, epochs)
    assert set(made_steps(cupy_model).values()) == {"one-kernel" if one_kernel else "planned"}
    for a, b in zip(cupy_model.get_params(), numpy_model.get_params()):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    for key in numpy_history:
        np.testing.assert_allclose(cupy_history[key], numpy_history[key], rtol=1e-8, atol=1e-10)
    assert cupy_model.optimizer.iterations == numpy_model.optimizer.iterations


def test_shuffled_batches_train_step_evaluate_and_predict(emulated, monkeypatch):
    """Shuffled mini-batches gathered on the device (take_rows), train_step, evaluate and predict
    on the CuPy backend, against NumPy given the same shuffle orders (the CuPy backend draws its
    orders on the device, from the same seeded host generator)."""
    from gpunn.backends import get_backend

    numpy_backend = get_backend("numpy")
    monkeypatch.setattr(numpy_backend, "permutation", lambda n, rng: emulated.permutation(n, rng))
    X, y = nn.datasets.spiral_data(samples=30, classes=3, seed=1)
    models = []
    for backend in (emulated, "numpy"):
        model = nn.Sequential([nn.Dense(2, 8, init="he", seed=1), nn.ReLU(),
                               nn.Dense(8, 3, seed=3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend=backend, dtype="float64")
        history = model.fit(X, y, epochs=2, batch_size=32, seed=4, verbose=0)
        step_loss = model.train_step(X[:17], y[:17])
        models.append((model, history.history, step_loss))
    (cupy_model, cupy_history, cupy_step), (numpy_model, numpy_history, numpy_step) = models
    for key in numpy_history:
        np.testing.assert_allclose(cupy_history[key], numpy_history[key], rtol=1e-9)
    assert cupy_step == pytest.approx(numpy_step, rel=1e-9)
    for a, b in zip(cupy_model.get_params(), numpy_model.get_params()):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    got, want = cupy_model.evaluate(X, y), numpy_model.evaluate(X, y)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-9) and got["accuracy"] == want["accuracy"]
    np.testing.assert_allclose(cupy_model.predict(X), numpy_model.predict(X), rtol=1e-9, atol=1e-12)
    order = emulated.permutation(90, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(90))


def test_info_names_the_gpu_paths_and_why_not(emulated):
    off = emulated.configured(one_kernel_trainer=False)
    assert gpu_paths(off) == ("CUDA graphs: no (CUDA on the CPU); cuBLASLt epilogues: no "
                                   "(CUDA on the CPU); one-kernel trainer: no (switched off; "
                                   "model.backend.one_kernel_trainer = True turns it on); "
                                   "precision tf32: no (precision 'tf32' needs cuBLAS through "
                                   "nvmath-python: CUDA on the CPU); precision bf16: yes; narrow "
                                   "kernels: on (Dense layers of up to 16 outputs, where faster "
                                   "than GEMMs); weight gradients on a second stream: off "
                                   "(overlap_weight_grads; in recorded steps)")
    assert "one-kernel trainer: yes" in gpu_paths(emulated)  # on by default on a GPU
    assert "; narrow kernels: off (Dense layers of up to 16 outputs, where faster than GEMMs);" \
        in gpu_paths(emulated.configured(narrow_kernels=False))
    assert gpu_paths(emulated.configured(overlap_weight_grads=True)).endswith(
        "; weight gradients on a second stream: on (overlap_weight_grads; in recorded steps)")


def test_info_says_whether_the_cublaslt_gemms_are_tuned(emulated, monkeypatch):
    """Where cuBLASLt runs, info names the epilogue policy and whether GEMMs are tuned (the
    default on a GPU)."""
    monkeypatch.setattr(type(emulated), "why_not", lambda self, feature: None)
    assert "cuBLASLt epilogues: yes, policy 'auto', GEMMs tuned;" in gpu_paths(emulated)
    untuned = emulated.configured(tune_gemms=False, epilogue_policy="never")
    assert "cuBLASLt epilogues: yes, policy 'never', GEMMs untuned;" in gpu_paths(untuned)


def test_the_one_kernel_trainer_says_when_a_batch_does_not_fit(emulated):
    model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend=emulated)
    model.backend.one_kernel_trainer = True
    assert steps.choose(model.network, 300) == "one-kernel"
    reason = steps.why_not(model.network, "one-kernel", 3000)
    assert reason.startswith("3000 rows of this network need ") and "a block of this GPU may have" in reason
    assert steps.choose(model.network, 3000) == "planned"


@pytest.mark.parametrize("chapter", list(test_book.CHAPTERS))
def test_the_books_chapters_on_the_cupy_backend(emulated, chapter):
    """The chapter ports of tests/test_book.py with gpunn.use() on the CuPy backend (kernels run
    on the CPU): every layer, loss and optimizer there, and the same numbers as the book's
    formulas (float64 data: to 1e-9 of each array's largest value, over a few epochs)."""
    script = test_book.CHAPTERS[chapter]
    want, want_arrays = test_book.run(script, test_book.reference_names(), samples=10, epochs=5,
                                      every=2)
    nn.use(emulated)
    try:
        got, got_arrays = test_book.run(script, test_book.gpunn_names(), samples=10, epochs=5,
                                        every=2, dtype="float64")
    finally:
        nn.use(None)
    test_book.assert_same_printout(got, want)
    test_book.assert_same_arrays(got_arrays, want_arrays, rtol=1e-9)


def test_fortran_ordered_data_trains_as_c_ordered_data(emulated):
    """DataFrame.to_numpy() of an all-float frame is Fortran-ordered; the row-gather kernel reads
    C-ordered rows. Data is made C-contiguous where it enters, and the gather refuses the rest."""
    X, y = nn.datasets.spiral_data(samples=30, classes=3, seed=1)
    histories = []
    for data in (X, np.asfortranarray(X)):
        model = nn.Sequential([nn.Dense(2, 8, init="he", seed=1), nn.ReLU(), nn.Dense(8, 3, seed=3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend=emulated, dtype="float64")
        histories.append(model.fit(data, y, epochs=3, batch_size=16, seed=4, verbose=0).history)
    assert histories[0] == histories[1]
    fortran = np.asfortranarray(X)
    with pytest.raises(ValueError, match="take_rows needs C-contiguous rows"):
        emulated.kernels.take_rows(fortran, np.arange(4), np.empty((4, 2)))


def test_shuffles_from_the_reseeded_generator_equal_fresh_ones(emulated):
    """The backend's one device generator, reseeded for each epoch, gives the orders a new
    generator per epoch gave."""
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(3):
        got = emulated.permutation(50, rng_a)
        fresh = np.argsort(np.random.RandomState(int(rng_b.integers(2**32))).random_sample(50))
        np.testing.assert_array_equal(got, fresh)


def test_kernels_are_looked_up_once():
    import types

    from gpunn.backends.cuda import launch

    asked = []

    class Module:
        def __init__(self, **kwargs):
            asked.append("module")

        def get_function(self, name):
            asked.append(name)
            return object()

    lookup = launch.compiled(types.SimpleNamespace(RawModule=Module))
    first = lookup("bias_act", np.float32)
    assert lookup("bias_act", np.float32) is first and lookup("bias_act", np.float64) is not first
    assert asked == ["module", "bias_act<float>", "bias_act<double>"]
    assert isinstance(lookup.module(), Module) and asked.count("module") == 1


def test_the_trainer_is_built_once_for_each_networks_sizes():
    """The one-kernel trainer for a network's sizes comes from a module of its own (one dtype:
    half the compile), built the first time those sizes are asked for; the other kernels, and
    the trainer built for no sizes, from the one module of all. An older kernels.cu whose trainer
    takes no sizes (benchmarks/one_kernel_phases.py --compare) gives that trainer whatever the
    sizes."""
    import types

    from gpunn.backends import cuda

    made = []

    class Module:
        def __init__(self, **kwargs):
            made.append(kwargs["name_expressions"])

        def get_function(self, name):
            return name, self

    lookup = launch.compiled(types.SimpleNamespace(RawModule=Module))
    book = lookup("train_in_one_kernel", np.float32, (2, 64, 3))
    assert book[0] == "train_in_one_kernel<float, 2, 64, 3>"
    assert lookup("train_in_one_kernel", np.float32, (2, 64, 3)) is book
    assert made == [["train_in_one_kernel<float, 2, 64, 3>"]]
    assert lookup.module((2, 64, 3), np.float32) is book[1]
    book64 = lookup("train_in_one_kernel", np.float64, (2, 64, 3))
    assert book64[0] == "train_in_one_kernel<double, 2, 64, 3>" and book64[1] is not book[1]
    assert lookup("train_in_one_kernel", np.float32, (5, 24, 3))[1] is not book[1]
    assert lookup("bias_act", np.float32) == ("bias_act<float>", lookup.module())
    assert lookup("train_in_one_kernel", np.float32) == ("train_in_one_kernel<float>", lookup.module())
    assert made[1:] == [["train_in_one_kernel<double, 2, 64, 3>"],
                        ["train_in_one_kernel<float, 5, 24, 3>"], cuda.name_expressions()]

    older = "template <typename T>\n__global__ void __launch_bounds__(512, 1)\n" \
            "train_in_one_kernel(const T* X, int n) {}"
    lookup = launch.compiled(types.SimpleNamespace(RawModule=Module), code=older)
    assert lookup("train_in_one_kernel", np.float32, (2, 64, 3)) == \
        ("train_in_one_kernel<float>", lookup.module())
    assert lookup.module((2, 64, 3), np.float32) is lookup.module()
    assert made[-1] == ["train_in_one_kernel<float>", "train_in_one_kernel<double>"]


def test_each_trainer_is_opted_into_the_shared_memory_its_network_needs():
    """A kernel may use more than 48 KiB of shared memory only where it was opted in, and each
    network's sizes have a trainer of their own: each is opted in for its own bytes (a GPU
    refuses the launch otherwise). The book's network on 300 rows needs 97,936 bytes in float32,
    a hidden layer of 32 on as many 55,952."""
    made = {}

    class Kernel:
        max_dynamic_shared_size_bytes = 48 << 10

        def __call__(self, grid, block, args, shared_mem=0):
            assert shared_mem <= max(self.max_dynamic_shared_size_bytes, 48 << 10)

    def lookup(name, dtype=None, sizes=()):
        return made.setdefault((name, np.dtype(dtype), tuple(sizes)), Kernel())

    kernels = launch.Kernels(lookup, np)
    for sizes in ((2, 64, 3), (2, 32, 3)):
        run_trainer(kernels, trainer_start("adam", np.float32, 300, sizes, np.random.default_rng(0)),
                    sizes, 1)
    assert {key[2]: kernel.max_dynamic_shared_size_bytes for key, kernel in made.items()} == \
        {(2, 64, 3): 97_936, (2, 32, 3): 55_952}


def test_a_lookup_over_other_options_and_another_source():
    """benchmarks/one_kernel_phases.py builds kernels.cu with the phase stamps, or another
    version of it, through the backend's own lookup: the backend's options come first."""
    import types

    from gpunn.backends import cuda
    from gpunn.backends.cuda import launch

    made = []

    class Module:
        def __init__(self, **kwargs):
            made.append(kwargs)

    launch.compiled(types.SimpleNamespace(RawModule=Module)).module()
    older = "template <typename T> __global__ void bias_act(T *z) {}\n" \
            "__global__ void hold_device(int n) {}  // relu_backward_column_sum came later"
    launch.compiled(types.SimpleNamespace(RawModule=Module), ("-DONE_KERNEL_PHASES",),
                    older).module()
    assert made[0]["code"] == cuda.source() and made[0]["options"] == cuda.NVRTC_OPTIONS
    assert made[0]["name_expressions"] == cuda.name_expressions()
    assert made[1]["code"] == older  # only the kernels it defines are asked for
    assert made[1]["name_expressions"] == ["bias_act<float>", "bias_act<double>", "hold_device"]
    assert made[1]["options"] == (*cuda.NVRTC_OPTIONS, "-DONE_KERNEL_PHASES")


@pytest.mark.parametrize("uploader", ["plain copies", "pinned"])
def test_streamed_data_trains_as_resident_data_on_the_cupy_backend(emulated, monkeypatch, uploader):
    """Host batches through the CuPy backend's planned steps (shuffled by the device's order)
    give what device-resident data gives: sent as plain copies, or through the backend's own
    pinned uploader (a stand-in runtime here), which starts an epoch's four small batches
    together and hands each step its rows of them."""
    if uploader == "pinned":
        from support.cuda_runtime import Runtime

        from gpunn.backends.cuda import transfer

        runtime = Runtime()
        monkeypatch.setattr(transfer, "CupyRuntime", lambda xp: runtime)
        monkeypatch.delattr(emulated, "uploader")  # the emulator's plain copies: the real one
    X, y = nn.datasets.spiral_data(samples=40, classes=3, seed=1)
    runs = []
    for stream in (False, True):
        model = nn.Sequential([nn.Dense(2, 8, init="he", seed=1), nn.ReLU(), nn.Dense(8, 3, seed=3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend=emulated, dtype="float64")
        history = model.fit(X, y, epochs=3, batch_size=32, seed=4, verbose=0, stream=stream)
        runs.append((history.history, model.get_params(), model.predict(X, stream=stream)))
    (ha, pa, qa), (hb, pb, qb) = runs
    assert ha == hb
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(qa, qb)
    if uploader == "pinned":  # one start an epoch, one for fit's last check, one for predict
        assert runtime.log.count(("copy", "copy")) == 2 * (3 + 1) + 1


def test_hold_keeps_the_device_busy_for_the_seconds_asked(emulated):
    """``hold`` (gpunn bench --ops) spins one thread for the time asked: here, where a launch
    returns when its kernel ends, that is the launch's own wall time."""
    for seconds in (0.0, 0.05):
        start = time.perf_counter()
        emulated.hold(seconds)
        took = time.perf_counter() - start
        assert seconds <= took < seconds + 0.5, (seconds, took)


def test_a_model_moved_or_unpickled_keeps_the_options_it_set_and_takes_the_new_defaults(emulated):
    """Options a model set go along to another backend; those it left at the old backend's
    defaults take the new one's: tuned GEMMs, on by default on a GPU, are off on the CPU unless
    asked for there; a one-kernel trainer switched off stays off (so a seed gives the NumPy
    steps' numbers there)."""
    import pickle

    def book(backend):
        model = nn.Sequential([nn.Dense(2, 8), nn.ReLU(), nn.Dense(8, 3)])
        return model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend=backend)

    assert book(emulated).backend.tune_gemms  # the GPU's default
    assert not book(emulated).to("numpy").backend.tune_gemms
    assert book("numpy").to(emulated).backend.tune_gemms
    assert book(emulated).to("numpy").backend.one_kernel_trainer  # on by default on both
    asked = book(emulated)
    asked.backend.epilogue_policy = "never"
    asked.backend.one_kernel_trainer = False
    moved = asked.to("numpy").backend
    assert (moved.epilogue_policy, moved.one_kernel_trainer, moved.tune_gemms) == ("never", False, False)
    # Unpickled where there is no GPU (here), a GPU model comes back on the CPU the same way.
    again = pickle.loads(pickle.dumps(book(emulated)))
    assert again.backend.name == "numpy" and not again.backend.tune_gemms
    asked_cpu = book("numpy")
    asked_cpu.backend.one_kernel_trainer = False
    assert not pickle.loads(pickle.dumps(asked_cpu)).backend.one_kernel_trainer


def test_dropout_masks_are_drawn_on_the_device_from_one_host_draw(emulated):
    """The CuPy backend draws a mask's uniforms on the device, seeded by one draw of the layer's
    host generator (not one per unit, then a copy): the same host state gives the same mask, a
    unit is kept with probability 1 - rate and scaled by 1 / (1 - rate), the dtype is kept."""
    rng, same, told = (np.random.default_rng(3) for _ in range(3))
    mask = emulated.dropout_mask((400, 500), 0.2, rng, np.float32)
    told.integers(2**32)
    assert rng.bit_generator.state == told.bit_generator.state  # one draw, whatever the shape
    np.testing.assert_array_equal(mask, emulated.dropout_mask((400, 500), 0.2, same, np.float32))
    kept = mask != 0
    assert mask.dtype == np.float32 and abs(kept.mean() - 0.8) < 0.0045  # 5 standard deviations
    np.testing.assert_array_equal(mask[kept], np.float32(1 / 0.8))
    assert not np.array_equal(mask, emulated.dropout_mask((400, 500), 0.2, rng, np.float32))


def test_dropout_training_resumes_exactly_on_the_cupy_backend(emulated, tmp_path):
    """Device masks come from the layer's host generator, which a checkpoint keeps: a run
    stopped and resumed gives the uninterrupted run's parameters."""
    X, y = nn.datasets.spiral_data(samples=30, classes=3, seed=1)

    def model():
        m = nn.Sequential([nn.Dense(2, 16, init="he", seed=1), nn.ReLU(), nn.Dropout(0.3),
                           nn.Dense(16, 3, seed=3)])
        return m.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend=emulated,
                         dtype="float64")

    whole = model()
    whole.fit(X, y, epochs=4, batch_size=32, seed=4, verbose=0)
    ck = tmp_path / "ck.safetensors"
    model().fit(X, y, epochs=2, batch_size=32, seed=4, verbose=0, checkpoint=ck)
    resumed = model()
    resumed.fit(X, y, epochs=4, batch_size=32, seed=4, verbose=0, resume_from=ck)
    for a, b in zip(whole.get_params(), resumed.get_params()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_narrow_kernels_train_as_the_gemms_do(emulated, monkeypatch, precision):
    """Where a GPU measures them faster than cuBLAS (here: told to), the output layer's forward,
    its weight and bias gradients, and the gradient it hands to the hidden layer (with that
    layer's ReLU and bias gradients) run in the narrow kernels, one launch each a step: three
    GEMMs, a column sum and a ReLU gradient pass fewer, the hidden layer's own products in GEMMs
    as before. Training follows the GEMM path's to float32 rounding (their sums run in another
    order), under bf16 from the same bfloat16 operands."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=2)  # 60 rows
    X = np.hstack([X, np.sin(3 * X), X ** 2])  # 6 inputs
    launches = {"narrow_forward": 0, "narrow_weight_grads": 0, "narrow_dinputs_relu_bgrad": 0,
                "gemm": 0, "column_sum": 0, "relu_backward_column_sum": 0}

    def counted(owner, name):
        real = getattr(owner, name)

        def call(*args, **kwargs):
            launches[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, call)

    for name in launches:
        if name != "gemm":
            counted(emulated.kernels, name)
    counted(emulated.blas, "gemm")
    runs = {}
    for prefer in (False, True):
        monkeypatch.setattr(emulated.narrow_choice, "prefer", prefer)
        for name in launches:
            launches[name] = 0
        model = nn.Sequential([nn.Dense(6, 24, init="he", seed=1), nn.ReLU(),
                               nn.Dense(24, 3, seed=3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend=emulated,
                      precision=precision)
        model.backend.one_kernel_trainer = False
        history = model.fit(X, y, epochs=3, batch_size=20, shuffle=False, verbose=0)
        assert set(made_steps(model).values()) == {"planned"}
        runs[prefer] = model.get_params(), history.history, dict(launches)
    (gemm_params, gemm_history, gemm_launches), (params, history, narrow_launches) = \
        runs[False], runs[True]
    steps_taken = 9  # and one forward pass more: fit's check of the last update
    assert not any(gemm_launches[name] for name in launches if name.startswith("narrow"))
    assert narrow_launches["narrow_forward"] == steps_taken + 1
    assert narrow_launches["narrow_weight_grads"] == steps_taken
    assert narrow_launches["narrow_dinputs_relu_bgrad"] == steps_taken
    assert narrow_launches["gemm"] == gemm_launches["gemm"] - 3 * steps_taken - 1
    assert narrow_launches["column_sum"] == gemm_launches["column_sum"] - steps_taken
    assert narrow_launches["relu_backward_column_sum"] == \
        gemm_launches["relu_backward_column_sum"] - steps_taken == 0
    for a, b in zip(params, gemm_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for key in gemm_history:
        np.testing.assert_allclose(history[key], gemm_history[key], rtol=1e-5)


def test_only_a_few_outputs_and_c_contiguous_operands_take_the_narrow_kernels(emulated,
                                                                            monkeypatch):
    """The backend asks for the narrow kernels where they can run and a model has not switched
    them off (narrow_kernels, on by default): up to 16 outputs (not 17),
    C-contiguous operands (a column slice of the inputs is not), operands of one dtype (a
    float32 batch into float64 weights is not), a layer with no ReLU of its own (the output
    layer's forward; a hidden one's bias + ReLU stay on the GEMM path); under bf16, a ReLU
    output below in bfloat16 with a bf16 array for the result."""
    asked = []
    monkeypatch.setattr(emulated.narrow_choice, "run",
                        lambda problem, ours, theirs: (asked.append(problem[0]), theirs())[1])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 12))
    for k, inputs, relu, expect in [(16, x, False, ["forward", "weight_grads", "dinputs"]),
                                    (17, x, False, []),
                                    (3, x[:, :6], False, ["dinputs"]),
                                    (3, x.astype(np.float32), False, ["dinputs"]),
                                    (3, x, True, ["weight_grads", "dinputs"])]:
        asked.clear()
        m = inputs.shape[1]
        w, b, out = rng.standard_normal((m, k)), rng.standard_normal((1, k)), np.empty((8, k))
        emulated.dense_forward(inputs, w, b, out, relu)
        emulated.weight_grads(inputs, out, out, np.empty((m, k)), np.empty((1, k)))
        emulated.dinputs_relu_bgrad(out, w, np.empty((8, m)), np.abs(x[:, :m]), np.empty((1, m)))
        assert asked == expect, (k, inputs.flags.c_contiguous, relu)
    # Precision "bf16": the ReLU output below is bfloat16 as the operands are, and the result
    # goes to a bf16 array (the kernel writes no other); a float32 output below is not taken.
    from gpunn.backends.cupy_backend import _narrow

    x16, w16 = (np.zeros(shape, np.uint16) for shape in ((8, 12), (12, 3)))
    dz16 = np.zeros((8, 3), np.uint16)
    out, sums = np.empty((8, 12), np.float32), np.empty((1, 12), np.float32)
    for relu_output, out16, takes in [(x16, x16.copy(), True), (x16, None, False),
                                      (x.astype(np.float32), x16.copy(), False)]:
        assert _narrow(3, out, (dz16, w16), (sums,), out16, relu_output) is takes
    off, w, out = emulated.configured(narrow_kernels=False), rng.standard_normal((12, 3)), np.empty((8, 3))
    off.dense_forward(x, w, np.zeros((1, 3)), out, False)
    off.weight_grads(x, out, out, np.empty((12, 3)), np.empty((1, 3)))
    off.dinputs_relu_bgrad(out, w, np.empty((8, 12)), np.abs(x), np.empty((1, 12)))
    assert asked == expect  # nothing more: switched off (model.backend.narrow_kernels = False)
