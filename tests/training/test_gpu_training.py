"""On a CUDA device: training on the CuPy backend (planned steps, CUDA graphs, cuBLASLt epilogues,
the one-kernel trainer) matches NumPy and the other paths within the dtype's tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CUPY_PROBLEM
from support.training import made_steps

import gpunn as nn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")]


def assert_trained_alike(got, want, dtype):
    """got, want: (parameters, per-epoch losses, predictions) of two runs from the same start
    that sum in different orders (cuBLAS vs OpenBLAS, kernels vs NumPy). float64: parameter by
    parameter. float32: Adagrad and Adam turn rounding-level differences in a near-zero gradient
    into whole learning-rate steps, so single parameters part while the training does not, and
    the runs drift apart slowly: measured (H100 and H200, 2026-11-27), the one-kernel trainer
    against the planned steps on the spiral agreed to 5e-6 in loss for 30 full-batch epochs, then
    drifted to 3.2e-3 by epoch 45 with Adagrad lr 0.3 (probabilities 0.022 apart by epoch 50) and
    1.7e-3 with Adam lr 0.05 (its 3-value output bias 4% apart in norm). float32 runs are
    therefore kept short (CHAOS_FREE_EPOCHS) and compared by losses (the first 10 epochs tightly:
    a wrong rule shows there), predictions and the norm of all parameters together."""
    (p_got, l_got, q_got), (p_want, l_want, q_want) = got, want
    if dtype == "float64":
        for a, b in zip(p_got, p_want):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(l_got, l_want, rtol=1e-9)
        np.testing.assert_allclose(q_got, q_want, rtol=1e-7, atol=1e-9)
        return
    np.testing.assert_allclose(l_got[:10], l_want[:10], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(l_got, l_want, rtol=1e-2, atol=1e-5)
    np.testing.assert_allclose(q_got, q_want, atol=2e-2)
    flat_got, flat_want = (np.concatenate([p.ravel() for p in ps]) for ps in (p_got, p_want))
    assert np.linalg.norm(flat_got - flat_want) <= 3e-2 * np.linalg.norm(flat_want)


#: Full-batch float32 epochs over which two summation orders still train alike (see above).
CHAOS_FREE_EPOCHS = 25


@pytest.mark.parametrize("make_opt", [lambda: nn.SGD(lr=0.1, momentum=0.9, decay=1e-3),
                                      lambda: nn.Adagrad(lr=0.1), lambda: nn.RMSprop(lr=0.005),
                                      lambda: nn.Adam(lr=0.01, decay=5e-7)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_training_matches_numpy(make_opt, dtype):
    """50 steps of each optimizer on both backends: the same training, to the precision of the
    dtype (GEMMs sum in different orders, so not bit for bit)."""
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    results = []
    for backend in ("numpy", "cupy"):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64, init="he"), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend=backend, dtype=dtype)
        model.backend.one_kernel_trainer = False  # cuBLAS and kernels (the one-kernel trainer: below)
        history = model.fit(X, y, epochs=50, batch_size=None, verbose=0)
        results.append((model.get_params(), history["loss"], model.predict(X)))
    assert_trained_alike(results[1], results[0], dtype)


def test_model_moves_between_backends_and_keeps_training():
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 16), nn.ReLU(), nn.Dense(16, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend="numpy")
    model.fit(X, y, epochs=5, batch_size=None, verbose=0)
    before = model.get_params()
    model.to("cupy")
    assert model.backend.name == "cupy"
    for a, b in zip(before, model.get_params()):
        np.testing.assert_array_equal(a, b)
    model.fit(X, y, epochs=5, batch_size=32, seed=0, verbose=0)
    model.to("numpy")
    assert model.optimizer.iterations == 5 + 5 * 5


def without_graphs(why_not):
    """A backend's why_not that says no to graphs and asks ``why_not`` for the rest."""
    def answer(feature, *args, **kwargs):
        return "graphs off for this run" if feature == "graphs" else why_not(feature, *args, **kwargs)
    return answer


@pytest.mark.parametrize("make_opt", [lambda: nn.SGD(lr=0.5, momentum=0.9, decay=1e-3),
                                      lambda: nn.Adam(lr=0.02, decay=5e-7)])
@pytest.mark.parametrize("batch_size", [None, 64])
def test_graph_replay_equals_eager_bit_for_bit(make_opt, batch_size, monkeypatch):
    """The same planned step, replayed from a CUDA graph or run eagerly, gives the same bits.
    Full batch, 200 epochs launch as 64, 64, 64 and 8: the 8-epoch step, run once, is never
    recorded (recording it would cost more than running it)."""
    from gpunn.backends import get_backend

    bk = get_backend("cupy")
    assert bk.why_not("graphs") is None, f"no capturable cuBLAS: {bk.why_not('graphs')}"
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    runs = []
    for graphs in (True, False):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64, init="he"), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend="cupy")
        model.backend.one_kernel_trainer = False  # the planned steps, which graphs record
        if not graphs:
            monkeypatch.setattr(model.backend, "why_not", without_graphs(model.backend.why_not))
        history = model.fit(X, y, epochs=200 if batch_size is None else 5, batch_size=batch_size,
                            seed=0, verbose=0)
        replayed = {(step.rows, step.steps): step.graph.replaying for step in model.steps}
        runs.append((model.get_params(), history.history, replayed))
    (p_graph, h_graph, replayed), (p_eager, h_eager, eager_replayed) = runs
    assert replayed == ({(64, 1): True, (44, 1): True} if batch_size
                        else {(300, 64): True, (300, 8): False})
    assert not any(eager_replayed.values())
    for a, b in zip(p_graph, p_eager):
        np.testing.assert_array_equal(a, b)
    assert h_graph == h_eager


def test_tf32_trains_close_to_fp32():
    from gpunn.backends import get_backend

    if get_backend("cupy").compute_capability()[0] < 8:
        pytest.skip("TF32 needs compute capability 8.0+")
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    results = []
    for precision in ("fp32", "tf32"):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.01, decay=5e-7), backend="cupy",
                      precision=precision)
        model.fit(X, y, epochs=100, batch_size=None, verbose=0)
        results.append(model.evaluate(X, y))
    assert abs(results[0]["loss"] - results[1]["loss"]) < 0.05


def test_the_books_run_on_the_gpu_in_planned_steps():
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05, decay=5e-7), backend="cupy")
    model.backend.one_kernel_trainer = False
    history = model.fit(X, y, epochs=10_001, batch_size=None, verbose=0)
    assert model.optimizer.iterations == 10_001 and len(history["loss"]) == 10_001
    assert model.evaluate(X, y)["accuracy"] >= 0.93


def test_device_permutation_is_a_seeded_permutation():
    from gpunn.backends import get_backend

    bk = get_backend("cupy")
    a = bk.to_numpy(bk.permutation(1000, np.random.default_rng(3)))
    b = bk.to_numpy(bk.permutation(1000, np.random.default_rng(3)))
    assert np.array_equal(a, b) and np.array_equal(np.sort(a), np.arange(1000))
    assert not np.array_equal(a, np.arange(1000))


def train_three_layers(precision: str, **options):
    """Dense(2, 64) -> ReLU -> Dense(64, 48) -> ReLU -> Dense(48, 3) on the spiral, seeded, on the
    CuPy backend with ``options`` set on the model's backend, 30 epochs in batches of 64: (the
    model, its parameters, the per-epoch losses). SGD with momentum: no rule that magnifies
    rounding, so parameters compare one by one."""
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 64, init="he"), nn.ReLU(), nn.Dense(64, 48, init="he"),
                           nn.ReLU(), nn.Dense(48, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(lr=0.1, momentum=0.9), backend="cupy",
                  precision=precision)
    for name, value in options.items():
        setattr(model.backend, name, value)
    history = model.fit(X, y, epochs=30, batch_size=64, seed=0, verbose=0)
    return model, model.get_params(), history["loss"]


def assert_three_layers_alike(got, want, precision: str, params_atol: float | None = None):
    """Two train_three_layers runs that sum in different orders (or round differently): losses
    to the precision's tolerance, parameters to ten times it."""
    (_, p_got, l_got), (_, p_want, l_want) = got, want
    rtol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(l_got, l_want, rtol=rtol, atol=1e-5)
    for a, b in zip(p_got, p_want):
        np.testing.assert_allclose(a, b, rtol=10 * rtol, atol=rtol if params_atol is None else params_atol)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_epilogue_and_separate_paths_train_alike(precision):
    """cuBLASLt epilogues always, or never: the same training within the precision's tolerance,
    and the epilogues really ran in float32 (bf16: were asked for, writing the bfloat16 hidden
    outputs and gradients with float32 biases and bias gradients, where cuBLASLt offers that)."""
    from gpunn.backends import get_backend

    bk = get_backend("cupy")
    if precision != "fp32" and bk.why_not(precision):
        pytest.skip(bk.why_not(precision))
    results = []
    for policy in ("always", "never"):
        results.append(train_three_layers(precision, epilogue_policy=policy))
        if policy == "always":
            used = {key: fused for key, fused in bk.epilogue_choice.decisions.items()
                    if key[-1] == "always" and (precision == "bf16") == any(
                        isinstance(part, np.dtype) and part == np.uint16 for part in key)}
            masked = {key: fused for key, fused in used.items()
                      if key[:2] == ("forward", "relu_mask") or key[0] == "dinputs"}
            # RELU_AUX_BIAS was asked for, and in float32 it and DRELU_BGRAD (which reads its
            # mask) ran everywhere. In bf16 they would write a bfloat16 D beside a float32 bias
            # (or bias gradient), which an H200's cuBLASLt (CUDA 13.2) offers no algorithm for
            # (it does with a bfloat16 bias): there the forward took the separate passes, as it
            # may, and with no mask kept the backward never asks for DRELU_BGRAD.
            for step in ("forward", "dinputs"):
                fused = [fused for key, fused in masked.items() if key[0] == step]
                assert (fused and all(fused)) if precision == "fp32" else \
                    (fused or step == "dinputs"), used
    assert_three_layers_alike(*results, precision)


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_with_no_mask_offered_the_relu_still_rides_on_the_forward_gemm_and_trains_alike(
        precision, monkeypatch):
    """Where cuBLASLt offers no RELU_AUX_BIAS (made so here), epilogues "always" take RELU_BIAS
    for the hidden layers' training forward, with no mask kept, and the backward reads the
    ReLU from the outputs: the same training as the separate passes ("never")."""
    from gpunn.backends import get_backend

    bk = get_backend("cupy")
    if precision != "fp32" and bk.why_not(precision):
        pytest.skip(bk.why_not(precision))
    if not bk.epilogues.available:
        pytest.skip(bk.epilogues.why_not)
    real, ran = bk.epilogues.forward, []

    def forward(inputs, weights, biases, out, relu, mask, tf32=False, tune=False):
        if mask is not None:
            return False  # as where cuBLASLt offers no algorithm for it
        done = real(inputs, weights, biases, out, relu, mask, tf32, tune)
        ran.append((relu, done))
        return done

    monkeypatch.setattr(bk.epilogues, "forward", forward)
    monkeypatch.setattr(bk.epilogue_choice, "decisions", {})  # this test's alone
    fused = train_three_layers(precision, epilogue_policy="always")
    assert (True, True) in ran, ran  # RELU_BIAS ran
    assert all(layer.relu_mask is None for layer in fused[0].dense_layers)
    assert_three_layers_alike(fused, train_three_layers(precision, epilogue_policy="never"),
                              precision)


def test_tf32_weight_gradients_from_transposed_copies_train_as_the_gemms_as_they_are(monkeypatch):
    """tf32 weight gradients from a transposed copy of an operand (recorded in the step's CUDA
    graph), or from the GEMMs as they are: the same training within tf32's tolerance; left to
    the timing, each hidden layer's weight gradient is timed once, both ways."""
    from gpunn.backends import get_backend

    bk = get_backend("cupy")
    if bk.why_not("tf32"):
        pytest.skip(bk.why_not("tf32"))
    monkeypatch.setattr(bk.transpose_choice, "decisions", {})  # this test's alone, then as before
    monkeypatch.setattr(bk.transpose_choice, "times", {})
    results = []
    for prefer in (True, False, None):
        monkeypatch.setattr(bk.transpose_choice, "prefer", prefer)
        # narrow kernels off: the output layer's weight gradient in a GEMM too
        results.append(train_three_layers("tf32", narrow_kernels=False))
        if prefer:  # copies of the narrower operand, in each layer's buffers: the first
            # layer's inputs (2 columns), the others' gradients (48 and 3)
            model = results[-1][0]
            copies = [{key[1] for key in layer.buffers if key[0] == "transposed"}
                      for layer in model.dense_layers]
            assert all(shape in shapes for shape, shapes in zip([(2, 64), (48, 64), (3, 64)],
                                                                copies)), copies
        if prefer is None:
            timed = {key[1:] for key in bk.transpose_choice.times}
            assert {((64, 2), (64, 64)), ((64, 64), (64, 48)), ((64, 48), (64, 3))} <= timed
    for result in results[1:]:
        assert_three_layers_alike(result, results[0], "tf32")


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_weight_gradients_on_a_second_stream_train_as_on_one(precision, monkeypatch):
    """overlap_weight_grads: in the recorded steps each Dense layer's weight gradients run on the
    side stream, beside the gradient handed down (a fork and a join in the CUDA graph, a cuBLAS
    handle and workspaces of the side stream's own); the same training as on one stream, within
    the precision's tolerance, and the work did go there."""
    from gpunn.backends import get_backend

    bk = get_backend("cupy")
    if precision != "fp32" and bk.why_not(precision):
        pytest.skip(bk.why_not(precision))
    if bk.why_not("graphs"):
        pytest.skip(bk.why_not("graphs"))
    forks, run = [], bk.side.run
    monkeypatch.setattr(bk.side, "run", lambda work: (forks.append(work), run(work))[1])
    overlapped = train_three_layers(precision, overlap_weight_grads=True)
    assert bk.side.made and forks, "nothing went to the side stream"
    assert_three_layers_alike(overlapped, train_three_layers(precision), precision)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_tuned_gemms_train_as_cublas_does(precision):
    """tune_gemms (every GEMM through cuBLASLt, each problem's algorithms timed and the fastest
    kept, cuBLAS's own choice timed beside a plain GEMM's) against cuBLAS's own choice: the same
    training within the precision's tolerance, and the tuned problems really ran, plain GEMMs
    among them."""
    from gpunn.backends import get_backend

    bk = get_backend("cupy")
    if precision != "fp32" and bk.why_not(precision):
        pytest.skip(bk.why_not(precision))
    for problem in bk.epilogues.problems.values():  # shared by every model and test: start
        problem.destroy()                            # with none, so those below are this test's
    bk.epilogues.problems.clear()                    # (direct calls elsewhere time no cuBLAS)
    with_tuning, without = (train_three_layers(precision, tune_gemms=tune) for tune in (True, False))
    assert_three_layers_alike(with_tuning, without, precision,
                              params_atol=1e-3 if precision == "fp32" else 0.2)
    tuned = [(spec, p) for spec, p in bk.epilogues.problems.items() if spec.candidates > 1]
    assert any(spec.epilogue == 1 for spec, _ in tuned), "no plain GEMM went through cuBLASLt"
    assert all(p.tuned and 0 <= p.chosen < p.count for _, p in tuned if p.supported)
    # cuBLAS's own choice was timed beside every plain problem's algorithms, and no epilogue's
    assert all((p.fallback_ms is not None) == (spec.epilogue == 1) for spec, p in tuned if p.supported)


@pytest.mark.parametrize("make_opt", [lambda: nn.SGD(lr=0.5, decay=1e-3),
                                      lambda: nn.SGD(lr=0.5, momentum=0.9, decay=1e-3),
                                      lambda: nn.Adagrad(lr=0.3, decay=1e-3),
                                      lambda: nn.RMSprop(lr=0.01, decay=1e-3),
                                      lambda: nn.Adam(lr=0.05, decay=5e-7)])
@pytest.mark.parametrize("dtype, batch_size", [("float32", None), ("float64", None),
                                               ("float32", 64)])
def test_one_kernel_trainer_matches_the_planned_steps(make_opt, dtype, batch_size):
    """kernels.cu's train_in_one_kernel against the planned steps (cuBLAS + kernels), same start."""
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    runs = []
    for one_kernel in (False, True):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64, init="he"), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), make_opt(), backend="cupy", dtype=dtype)
        model.backend.one_kernel_trainer = one_kernel
        epochs = 5 if batch_size else CHAOS_FREE_EPOCHS if dtype == "float32" else 50
        history = model.fit(X, y, epochs=epochs, batch_size=batch_size, seed=0, verbose=0)
        assert set(made_steps(model).values()) == {"one-kernel" if one_kernel else "planned"}
        assert model.optimizer.iterations == (25 if batch_size else epochs)
        runs.append((model.get_params(), history["loss"], model.predict(X)))
    assert_trained_alike(runs[1], runs[0], dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_trainer_built_for_the_books_sizes_gives_the_bits_of_the_one_built_for_none(
        dtype, monkeypatch):
    """On the device as on the CPU (test_cuda_on_cpu): the backend's one-kernel trainer, built
    for the network's sizes, against the same source built for none, over 200 full-batch epochs
    of the book's network. The same arithmetic in the same order; NVRTC contracting a product and
    a sum into one FMA in one build and not the other would show here."""
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    runs = []
    for sized in (True, False):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05, decay=5e-7), backend="cupy",
                      dtype=dtype)
        kernels = model.backend.kernels
        if not sized:
            monkeypatch.setattr(kernels, "lookup", lambda name, dtype=None, sizes=(),
                                lookup=kernels.lookup: lookup(name, dtype))
        history = model.fit(X, y, epochs=200, batch_size=None, verbose=0)
        monkeypatch.undo()
        assert set(made_steps(model).values()) == {"one-kernel"}
        runs.append((model.get_params(), history.history["loss"]))
    (p_sized, l_sized), (p_none, l_none) = runs
    for a, b in zip(p_sized, p_none):
        np.testing.assert_array_equal(a, b)
    assert l_sized == l_none


def test_the_books_run_with_the_one_kernel_trainer_the_gpus_default():
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05, decay=5e-7), backend="cupy")
    assert model.backend.one_kernel_trainer  # on by default on a GPU: nothing to set
    model.fit(X, y, epochs=10_001, batch_size=None, verbose=0)
    assert set(made_steps(model).values()) == {"one-kernel"}
    assert model.evaluate(X, y)["accuracy"] >= 0.93


@pytest.mark.parametrize("upload_thread, grouped", [(False, False), (True, False), (None, False),
                                                    (None, True)])
def test_a_memmap_over_the_data_budget_streams_through_pinned_buffers_and_trains_as_resident(
        tmp_path, monkeypatch, upload_thread, grouped):
    """A float64 .npy memmap over a data budget set for the test: fit (shuffled batches, a
    validation split), evaluate and predict send it through the pinned uploader on its copy
    stream (two slots; with ``upload_thread``, here for batches of any size, READ_AHEAD reading
    workers over READ_AHEAD + 2; None: the default, which reads these small batches on the
    calling thread), a batch to a start or (``grouped``, the default) an epoch's small batches
    together, and give what the same data kept on the device gives, to float32's tolerance (the
    same kernels in the same order: the bits should agree)."""
    from gpunn.backends.cuda import transfer

    if upload_thread:
        monkeypatch.setattr(transfer, "WORKER_MIN_BYTES", 0)
    if not grouped:
        monkeypatch.setattr(transfer, "GROUP_BYTES", 0)  # a batch to a start

    X, y = nn.datasets.spiral_data(samples=200, classes=3, seed=0)
    np.save(tmp_path / "X.npy", X)
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    monkeypatch.setenv("GPUNN_DATA_BUDGET", str(X.shape[0] * X.shape[1]))  # a quarter of float32's
    uploads = []
    start = transfer.PinnedUploader.start

    def counted(self, read):
        uploads.append((self, self.slots[self.next]))  # kept: no id is reused
        return start(self, read)

    monkeypatch.setattr(transfer.PinnedUploader, "start", counted)
    runs = []
    for stream in (None, False):  # None: over the budget, so streamed; False: kept on the device
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64, init="he"), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.02), backend="cupy")
        if upload_thread is not None:
            model.backend.upload_thread = upload_thread
        history = model.fit(X, y, epochs=4, batch_size=64, seed=1, verbose=0,
                            validation_split=0.2, stream=stream)
        runs.append((model.get_params(), history.history, model.evaluate(X, y, stream=stream),
                     model.predict(X, batch_size=100, stream=stream)))
        if stream is None:
            streamed = len(uploads)
    assert len(uploads) == streamed  # only the first run went through it
    if grouped:  # an epoch's 8 batches of 64 rows (1 KiB each) in one start
        assert 4 <= streamed < 4 * 8 and uploads[0][0].batches == 8
    else:
        assert streamed >= 4 * 8
        slots: dict[int, set[int]] = {}
        for uploader, slot in uploads:
            slots.setdefault(id(uploader), set()).add(id(slot))
        assert max(map(len, slots.values())) == (transfer.READ_AHEAD + 2 if upload_thread else 2)
    (p_s, h_s, e_s, q_s), (p_r, h_r, e_r, q_r) = runs
    for a, b in zip(p_s, p_r):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in h_r:
        np.testing.assert_allclose(h_s[key], h_r[key], rtol=1e-5, atol=1e-6)
    assert e_s["loss"] == pytest.approx(e_r["loss"], rel=1e-5)
    np.testing.assert_allclose(q_s, q_r, rtol=1e-5, atol=1e-6)
