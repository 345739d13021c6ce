"""Precision "bf16": GEMMs on bfloat16 copies of their operands, summing in float32; float32 for
everything else. Checked against tests/support/bf16_reference.py (plain NumPy, rounded by
ml_dtypes) on three backends: base.py's reference ops on NumPy (support.backends.Bf16Numpy), the
CuPy backend with its kernels run on the CPU, and a GPU (gpu-marked)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CUPY_PROBLEM, to_host
from cuda_on_cpu.emulator import emulated_backend
from support.backends import Bf16Numpy
from support.cublaslt import EPILOGUE, FakeLt, with_epilogues

import gpunn as nn
from gpunn.backends import get_backend
from gpunn.backends.bf16 import widen
from gpunn.training import steps

ml_dtypes = pytest.importorskip("ml_dtypes")
from support import bf16_reference as reference  # noqa: E402  (needs ml_dtypes)

ON_GPU = [pytest.mark.gpu,
          pytest.mark.skipif(CUPY_PROBLEM is not None, reason=f"no CUDA device: {CUPY_PROBLEM}")]


@pytest.fixture(params=["reference-ops", "cpu-emulation", "cpu-emulation-cublaslt",
                        pytest.param("gpu", marks=ON_GPU),
                        pytest.param("gpu-cublaslt", marks=ON_GPU)])
def bf16_backend(request):
    """The backends bf16 runs on; "-cublaslt": with cuBLASLt's epilogues always (the stand-in's,
    tests/support/cublaslt.py, on the CPU), where they run: bias + ReLU on the forward GEMMs, the
    ReLU and bias gradients on the backward ones, writing bfloat16 themselves."""
    if request.param == "reference-ops":
        return Bf16Numpy()
    if request.param == "cpu-emulation":
        return request.getfixturevalue("emulated")
    if request.param == "cpu-emulation-cublaslt":
        return emulated_with_cublaslt(request.getfixturevalue("harness"))
    if request.param == "gpu-cublaslt":
        bk = gpu_bf16()
        if bk.why_not("epilogues"):
            pytest.skip(bk.why_not("epilogues"))
        return bk.configured(epilogue_policy="always")
    return gpu_bf16()


def emulated_with_cublaslt(harness, lt=None):
    """A fresh emulated CuPy backend with the stand-in's cuBLASLt epilogues, always taken."""
    return with_epilogues(emulated_backend(harness), lt or FakeLt()).configured(
        epilogue_policy="always", tune_gemms=False)


def gpu_bf16():
    """The CuPy backend, where this device and install run bf16 GEMMs (else the test skips)."""
    bk = get_backend("cupy")
    if bk.why_not("bf16"):
        pytest.skip(bk.why_not("bf16"))
    return bk


def spiral(samples=40):
    return nn.datasets.spiral_data(samples=samples, classes=3, seed=0)


def network(backend, precision="bf16", sizes=(2, 32, 16, 3), lr=0.02, seed=0):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Dense(n_in, n_out, init="he", seed=seed + i), nn.ReLU()]
    model = nn.Sequential(layers[:-1])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=lr), backend=backend, precision=precision)
    return model


def bits(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def test_the_numpy_backend_refuses_bf16_and_float64_is_refused_everywhere():
    model = network("numpy", precision="fp32")
    before = model.get_params()
    with pytest.raises(ValueError, match="precision 'bf16' needs the cupy backend on a GPU of "
                                         "compute capability 8.0 or newer; the numpy backend"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend="numpy", precision="bf16")
    with pytest.raises(ValueError, match="precision 'bf16' applies to float32 models; got dtype "
                                         "'float64'"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend=Bf16Numpy(), dtype="float64",
                      precision="bf16")
    assert model.precision == "fp32"  # refused before anything changed
    for a, b in zip(model.get_params(), before):
        np.testing.assert_array_equal(a, b)


def test_the_gemms_read_bf16_roundings_and_the_gradients_are_the_references(bf16_backend):
    """One step: each Dense layer's GEMM operands are its inputs and weights rounded to bfloat16
    (bit for bit as ml_dtypes rounds them), and the gradients are the reference's: equal up to
    float32 summation order, and unlike the float32 gradients by far more than that."""
    X, y = spiral()
    model = network(bf16_backend)
    params = model.get_params()
    model.train_step(X, y)
    want, _ = reference.step([p.astype(np.float32) for p in params], X, y)
    dense = [layer for layer in model.layers if isinstance(layer, nn.Dense)]
    outputs = reference.forward([p.astype(np.float32) for p in params], X)
    for i, layer in enumerate(dense):
        inputs, weights = layer.operands
        # the data rounded; above it, the hidden layer's output, kept in bfloat16 alone
        if i == 0 or bf16_backend.xp is np:  # the CPU backends' GEMMs are the reference's
            np.testing.assert_array_equal(to_host(inputs), bits(X if i == 0 else outputs[i - 1]))
        else:
            # A GPU's GEMMs sum in another order, so a value near a bfloat16 rounding midpoint
            # may round the other way, and the next layer's sums move with it: each layer's
            # operand against its own inputs' rounded product, within a step of bfloat16.
            below_inputs, below_weights = dense[i - 1].operands
            z = gemm_of(below_inputs, below_weights) + params[2 * i - 1]
            np.testing.assert_allclose(widen(np, to_host(inputs)), np.maximum(z, 0),
                                       rtol=2**-8, atol=1e-5)
        np.testing.assert_array_equal(to_host(weights), bits(params[2 * i]))
        np.testing.assert_allclose(to_host(layer.dweights), want[2 * i], rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(to_host(layer.dbiases), want[2 * i + 1], rtol=2e-5, atol=1e-7)
    fp32 = network("numpy", precision="fp32")
    fp32.set_params(params)
    fp32.train_step(X, y)
    gap = max(np.abs(to_host(a.dweights) - b.dweights).max() / np.abs(b.dweights).max()
              for a, b in zip(dense, [layer for layer in fp32.layers if isinstance(layer, nn.Dense)]))
    assert gap > 1e-3  # the rounding is really there


def test_bf16_training_follows_the_reference(bf16_backend):
    """25 full-batch Adam steps: the same losses and weights as the reference's, within what
    float32 summation order gives."""
    X, y = spiral()
    model = network(bf16_backend)
    params = [p.astype(np.float32) for p in model.get_params()]
    losses = reference.train_adam(params, X, y, steps=25, lr=0.02)
    history = model.fit(X, y, epochs=25, batch_size=None, verbose=0)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-4)
    for got, want in zip(model.get_params(), params):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("where", ["reference-ops", pytest.param("gpu", marks=ON_GPU)])
def test_bf16_reaches_float32_accuracy_on_the_digits_and_the_book_run(where):
    """The digits classifier (held-out accuracy within 0.01 of float32's) and the book's whole
    run (10,001 epochs; its training accuracy no more than 0.01 below float32's: the run is
    chaotic, and any change of rounding takes it elsewhere). Not on the kernels run on the CPU:
    the book's run would take them about 8 minutes (48 ms an epoch on a 2-core EPYC)."""

    def backend():
        return Bf16Numpy() if where == "reference-ops" else gpu_bf16()

    X, y = nn.datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1400], order[1400:]
    accuracy = {}
    for precision in ("fp32", "bf16"):
        model = network(backend(), precision, sizes=(64, 128, 10), lr=0.005)
        model.fit(X[train], y[train], epochs=30, batch_size=64, seed=0, verbose=0)
        accuracy[precision] = model.evaluate(X[test], y[test])["accuracy"]
    assert accuracy["fp32"] > 0.95
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.01, accuracy
    X, y = nn.datasets.spiral_data(samples=100, classes=3, seed=0)
    for precision in ("fp32", "bf16"):
        nn.set_seed(0)
        model = nn.Sequential([nn.Dense(2, 64), nn.ReLU(), nn.Dense(64, 3)])
        model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05, decay=5e-7), backend=backend(),
                      precision=precision)
        model.fit(X, y, epochs=10_001, batch_size=None, verbose=0)
        accuracy[precision] = model.evaluate(X, y)["accuracy"]
    assert accuracy["fp32"] > 0.9
    assert accuracy["bf16"] >= accuracy["fp32"] - 0.01, accuracy


def test_hidden_layers_keep_their_outputs_and_gradients_in_bf16_alone(emulated, monkeypatch):
    """On the CuPy backend a hidden layer below another Dense layer keeps its output in bfloat16
    alone, written by its bias + ReLU pass (the GEMM operand of the layer above, and what the
    ReLU's gradient is read from), and the layer above hands down its gradient in bfloat16 alone,
    written by the ReLU gradient pass (the operand of the weight-gradient GEMM; the bias gradient
    summed from the float32 values): neither pass writes float32 back, so the float32 arrays hold
    the GEMMs' raw results. The loss's pass writes the copy of dlogits; the three weights are
    rounded in one pass over the flat parameters: of the nine copies a step of three Dense
    layers reads, the data's is the only other conversion. They are the exact roundings."""
    converted = conversions(emulated, monkeypatch)
    X, y = spiral()  # 120 rows
    model = network(emulated)  # Dense(2, 32), Dense(32, 16), Dense(16, 3)
    params = model.get_params()  # what the step's forward pass reads
    model.train_step(X, y)
    # The data and all 675 parameters at once; not the hidden outputs (120, 32), (120, 16), nor
    # their gradients, nor dlogits (120, 3).
    assert sorted(converted) == sorted([(120, 2), (675,)])
    dense = [layer for layer in model.layers if isinstance(layer, nn.Dense)]
    flat16 = model.network.params16
    for layer, w in zip(dense, params[::2]):
        assert layer.operands[1].base is flat16 or layer.operands[1].base is flat16.base
        np.testing.assert_array_equal(to_host(layer.operands[1]), bits(w))
    outputs = reference.forward([p.astype(np.float32) for p in params], X)
    for lower, upper, want in zip(dense, dense[1:], outputs):
        assert lower.output.dtype == np.uint16 and upper.dinputs.dtype == np.uint16
        assert upper.inputs is lower.output and upper.operands[0] is lower.output
        np.testing.assert_array_equal(to_host(lower.output), bits(want))
        assert upper.dinputs is buffer(lower, "dvalues16")
        # the float32 arrays as the GEMMs left them: before the bias and ReLU, and unmasked
        z, dz = to_host(buffer(lower, "output")), to_host(buffer(upper, "dinputs"))
        np.testing.assert_allclose(z, gemm_of(*lower.operands), rtol=1e-5, atol=1e-6)
        upper_dz16 = buffer(model.network.loss if upper is dense[-1] else upper,
                            "dinputs16" if upper is dense[-1] else "dvalues16")
        np.testing.assert_allclose(dz, gemm_of(upper_dz16, upper.operands[1].T),
                                   rtol=1e-5, atol=1e-6)
        passed = widen(np, to_host(lower.output)) > 0
        assert np.any(dz[~passed] != 0)  # the ReLU gradient pass left the float32 one alone
        np.testing.assert_array_equal(to_host(upper.dinputs), bits(np.where(passed, dz, 0)))
    np.testing.assert_array_equal(to_host(buffer(model.network.loss, "dinputs16")),
                                  bits(to_host(model.network.loss.dinputs)))


def test_with_cublaslt_the_gemms_epilogues_write_the_bf16_outputs_and_gradients(harness,
                                                                                 monkeypatch):
    """Where cuBLASLt's epilogues run (the stand-in's, always), a hidden layer's bfloat16 output
    comes from its forward GEMM's epilogue (RELU_AUX_BIAS: the float32 bias and the ReLU on the
    float32 sums, rounded once as written, the mask kept), the gradient handed down from the
    backward GEMM's (DRELU_BGRAD: the ReLU gradient from that mask, the float32 bias gradient),
    and the output layer's bias from BIAS. The separate bias and ReLU-gradient passes do not run,
    and no float32 activation or gradient is written. The outputs are the reference's bit for
    bit; the gradients within float32 summation order."""
    lt = FakeLt()
    bk = emulated_with_cublaslt(harness, lt)
    passes = []
    for name in ("bias_act", "relu_backward_column_sum"):
        run = getattr(bk.kernels, name)
        monkeypatch.setattr(bk.kernels, name,
                            lambda *a, _run=run, _name=name, **k: passes.append(_name) or _run(*a, **k))
    X, y = spiral()
    model = network(bk)  # Dense(2, 32), Dense(32, 16), Dense(16, 3)
    model.train_step(X, y)  # plans the buffers
    dense = [layer for layer in model.layers if isinstance(layer, nn.Dense)]
    scratch = [buffer(lower, "output") for lower in dense[:-1]] + \
              [buffer(upper, "dinputs") for upper in dense[1:]]
    for array in scratch:
        array[...] = np.nan
    params = model.get_params()
    lt.calls.clear()
    passes.clear()
    model.train_step(X, y)
    assert sorted(epilogue for epilogue, _, _ in lt.calls) == \
        [EPILOGUE.BIAS] + [EPILOGUE.RELU_AUX_BIAS] * 2 + [EPILOGUE.DRELU_BGRAD] * 2
    assert passes == []
    assert all(np.isnan(array).all() for array in scratch)
    outputs = reference.forward([p.astype(np.float32) for p in params], X)
    want, _ = reference.step([p.astype(np.float32) for p in params], X, y)
    for lower, upper, output in zip(dense, dense[1:], outputs):
        assert lower.relu_mask is not None and upper.dinputs.dtype == np.uint16
        np.testing.assert_array_equal(lower.output, bits(output))
    for i, layer in enumerate(dense):
        np.testing.assert_allclose(layer.dweights, want[2 * i], rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(layer.dbiases, want[2 * i + 1], rtol=2e-5, atol=1e-7)


def conversions(backend, monkeypatch):
    """The shapes of the arrays ``backend``'s float_to_bf16 kernel rounds, as it is called."""
    converted = []
    convert = backend.kernels.float_to_bf16
    monkeypatch.setattr(backend.kernels, "float_to_bf16",
                        lambda x, out: converted.append(x.shape) or convert(x, out))
    return converted


def buffer(part, name):
    """The planned buffer ``name`` of a layer or loss (the one of that name)."""
    (found,) = [buf for (key, _, _), buf in part.buffers.items() if key == name]
    return found


def gemm_of(a16, b16):
    """The float32 product of two bfloat16 operands, from the host."""
    return widen(np, to_host(a16)) @ widen(np, to_host(b16))


def test_a_planned_step_rounds_its_inputs_once_as_they_are_loaded(emulated, monkeypatch):
    """A planned bf16 step keeps its inputs in bfloat16 (the first Dense layer's GEMM operand,
    which nothing else reads): a batch is rounded once as it is loaded, not by each step's
    forward pass, and a shuffled one as it is gathered (take_rows_bf16, no float32 batch).
    Training takes the same numbers, bit for bit, as with the float32 inputs buffer."""
    converted = conversions(emulated, monkeypatch)
    X, y = spiral()  # 120 rows
    model = network(emulated)
    step = model.prepare_step(X, y)
    for _ in range(3):
        step()
    assert converted.count((120, 2)) == 1 and converted.count((675,)) == 3
    (planned,) = model.steps
    np.testing.assert_array_equal(to_host(planned.x), bits(X))

    gathered = []
    take = emulated.kernels.take_rows
    monkeypatch.setattr(emulated.kernels, "take_rows",
                        lambda x, rows, out: gathered.append(out.dtype) or take(x, rows, out))
    runs = []
    for inputs in ("bf16", "float32"):
        gathered.clear()
        if inputs == "float32":  # the planned steps' inputs as they were: float32, rounded by
            monkeypatch.setattr(steps, "x_dtype", lambda net: net.dtype)  # the forward pass
        model = network(emulated)
        history = model.fit(X, y, epochs=3, batch_size=32, seed=5, verbose=0)
        runs.append((history.history, model.get_params()))
        assert gathered.count(np.uint16) == (12 if inputs == "bf16" else 0)
    (h16, p16), (h32, p32) = runs
    assert h16 == h32
    for a, b in zip(p16, p32):
        np.testing.assert_array_equal(a, b)


def test_the_weights_bf16_copies_follow_weights_set_between_steps(emulated):
    """The flat copy is rounded every forward pass: weights set (set_params) or written in
    place between steps are what the next step's GEMMs read, and a Dense given a new weights
    array rounds that array itself."""
    X, y = spiral()
    model = network(emulated)
    model.train_step(X, y)
    params = [p * 1.5 + 0.25 for p in model.get_params()]
    model.set_params(params)
    dense = [layer for layer in model.layers if isinstance(layer, nn.Dense)]
    dense[1].weights[0, 0] = 7.0  # in place, as the book's code may
    model.predict(X)
    for layer in dense:
        np.testing.assert_array_equal(to_host(layer.operands[1]), bits(to_host(layer.weights)))
    assert to_host(dense[1].operands[1])[0, 0] == bits(7.0)
    dense[0].weights = dense[0].weights * 2  # a new array: not the flat buffer's view
    model.network.forward(model.network.backend.asarray(X.astype(np.float32)), training=False)
    np.testing.assert_array_equal(to_host(dense[0].operands[1]), bits(to_host(dense[0].weights)))


def test_a_loss_gradient_written_without_its_copy_is_rounded_afresh(emulated):
    """The loss hands its bf16 copy of dlogits to the last Dense layer only with the gradient
    written along with it: rewritten by the book's ``backward`` (into the same buffer), the
    gradient is rounded again, so no step reads a copy older than its gradient."""
    X, y = spiral()
    model = network(emulated)
    net = model.network
    x, labels = net.prepare(X, y)
    net.loss.train(net.forward(x, training=True), labels)  # dlogits and its copy
    net.loss.backward(net.loss.output * 0.5, labels)  # dlogits again, no copy
    assert net.loss.dinputs16 is None
    net.backward(net.loss.dinputs)
    last = [layer for layer in model.layers if isinstance(layer, nn.Dense)][-1]
    (own,) = [buf for (name, _, _), buf in last.buffers.items() if name == "dvalues16"]
    np.testing.assert_array_equal(to_host(own), bits(to_host(net.loss.dinputs)))


def test_the_one_kernel_trainer_leaves_bf16_to_the_planned_steps(emulated):
    model = nn.Sequential([nn.Dense(2, 16), nn.ReLU(), nn.Dense(16, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend=emulated, precision="bf16")
    model.backend.one_kernel_trainer = True
    assert "bf16" in steps.why_not(model.network, "one-kernel", 100)
    assert steps.choose(model.network, 100) == "planned"
    # The NumPy backend's compiled trainer too (its reference ops take bf16 here), eager steps.
    cpu = nn.Sequential([nn.Dense(2, 16), nn.ReLU(), nn.Dense(16, 3)])
    cpu.compile(nn.SoftmaxCrossEntropy(), nn.Adam(), backend=Bf16Numpy(), precision="bf16")
    assert cpu.backend.one_kernel_trainer
    assert steps.why_not(cpu.network, "one-kernel", 100) == \
        "the one-kernel trainer computes in the model's dtype, not with bf16 GEMMs"
    assert steps.choose(cpu.network, 100) == "eager"


def test_a_bf16_model_saves_its_precision_and_loads_on_the_cpu_in_fp32(tmp_path):
    X, y = spiral()
    model = network(Bf16Numpy())
    model.fit(X, y, epochs=3, verbose=0)
    path = tmp_path / "bf16.safetensors"
    model.save(path)
    loaded = nn.load(path)  # on the NumPy backend, which computes in fp32
    assert loaded.precision == "fp32"
    for a, b in zip(loaded.get_params(), model.get_params()):
        np.testing.assert_array_equal(a, b)


def test_plan_bytes_counts_the_bf16_operands(emulated):
    """What a planned bf16 step allocates besides the float32 plan, counted from the buffers one
    planned step leaves: the bfloat16 inputs and incoming gradient of each Dense layer, and the
    copy of the flat parameters, less what the step's input buffer saves in bfloat16."""
    X, y = spiral(samples=10)
    fp32, bf16 = network(emulated, "fp32"), network(emulated, "bf16")
    for model in (fp32, bf16):
        model.prepare_step(X, y)()  # the planned step alone (fit checks its loss eagerly too)

    def halves(model):
        flat = model.network.params16  # every weight's copy, in one buffer
        return sum(buf.nbytes for part in [*model.layers, model.network.loss]
                   for buf in part.buffers.values()
                   if buf.dtype == np.uint16) + (0 if flat is None else flat.nbytes)

    (step,) = bf16.steps
    assert step.path == "planned" and step.x.dtype == np.uint16
    assert halves(fp32) == 0 and halves(bf16) > 0
    saved = 30 * 2 * (4 - 2)  # the inputs, 30 rows of 2, in 2 bytes instead of 4
    assert steps.plan_bytes(bf16.network, 30) - steps.plan_bytes(fp32.network, 30) \
        == halves(bf16) - saved
