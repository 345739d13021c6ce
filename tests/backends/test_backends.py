"""Backend choice: names, the GPUNN_BACKEND variable, errors that say why and how to fix."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CUPY_PROBLEM
from support.training import apply_rule, same_bits

import gpunn as nn
from gpunn.backends import Backend, BackendUnavailableError, get_backend, jit
from gpunn.backends.base import FEATURES
from gpunn.backends.cupy_backend import CupyBackend
from gpunn.backends.numpy_backend import NumpyBackend


def test_available_lists_numpy_first():
    names = nn.backends.available()
    assert names[0] == "numpy" and set(names) <= {"numpy", "cupy"}
    assert ("cupy" in names) == (CUPY_PROBLEM is None)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'numpy', 'cupy'; got 'tpu'"):
        get_backend("tpu")
    model = nn.Sequential([nn.Dense(2, 3)])
    with pytest.raises(ValueError, match="backend must be one of"):
        model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend="tpu")
    assert model.backend is None


@pytest.mark.skipif(CUPY_PROBLEM is None, reason="CuPy runs here; this checks the refusal")
def test_cupy_where_it_cannot_run_says_why_and_how_to_install():
    with pytest.raises(BackendUnavailableError, match=r'cannot run: .*pip install "gpunn\[cuda12\]"'):
        get_backend("cupy")


def test_env_variable_is_read_when_needed(monkeypatch):
    monkeypatch.setenv("GPUNN_BACKEND", "numpy")
    assert get_backend().name == "numpy"
    monkeypatch.setenv("GPUNN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="got 'nonsense'"):
        nn.Sequential([nn.Dense(2, 3)]).compile(nn.SoftmaxCrossEntropy(), nn.SGD())


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GPUNN_BACKEND": ""})


def test_auto_picks_and_logs_which_once_where_the_application_says():
    """In a fresh process, as a user meets it: "auto" decides once and logs it at INFO on the
    "gpunn" logger. A library adds only a NullHandler: nothing shows unless the application's
    logging config asks (here basicConfig), and then exactly once."""
    code = ("import gpunn; a = gpunn.backends.get_backend('auto'); "
            "b = gpunn.backends.get_backend('auto'); print(a.name, a is b)")
    name = "numpy" if CUPY_PROBLEM else "cupy"
    silent = run_python(code)
    assert silent.stdout.split() == [name, "True"] and silent.stderr == ""
    shown = run_python("import logging; logging.basicConfig(level=logging.INFO, "
                       "format='%(name)s %(message)s'); " + code)
    assert shown.stderr.count(f"gpunn gpunn: backend 'auto' chose {name}") == 1, shown.stderr
    handlers = run_python("import logging, gpunn; log = logging.getLogger('gpunn'); "
                          "print(log.propagate, [type(h).__name__ for h in log.handlers])")
    assert handlers.stdout.split() == ["True", "['NullHandler']"]


def test_why_not_answers_each_feature_with_a_reason_or_none():
    bk = get_backend("numpy")
    for feature in FEATURES:
        if feature != "one_kernel_trainer":
            assert isinstance(bk.why_not(feature), str) and "numpy" in bk.why_not(feature)
    # The compiled trainer: on by default, where numba is, for up to 16 inputs and classes.
    reason = jit.why_not()
    assert reason is None or reason.startswith("needs numba")
    assert bk.why_not("one_kernel_trainer", sizes=(2, 64, 3)) == \
        (None if reason is None else f"the CPU one-kernel trainer {reason}")
    assert bk.configured(one_kernel_trainer=False).why_not("one_kernel_trainer") == \
        "switched off on the numpy backend; model.backend.one_kernel_trainer = True turns it on"
    with pytest.raises(ValueError, match="feature must be one of 'planned_steps', 'graphs'"):
        bk.why_not("fp16")


def test_configured_copies_share_the_device_but_not_the_options():
    bk = get_backend("numpy")
    view = bk.configured(epilogue_policy="never", one_kernel_trainer=False)
    assert view is not bk and view.xp is bk.xp and view.name == "numpy"
    assert (view.epilogue_policy, view.one_kernel_trainer) == ("never", False)
    assert (bk.epilogue_policy, bk.one_kernel_trainer) == ("auto", True)
    assert not view.small_net_kernel and bk.small_net_kernel  # the name the option had before
    with pytest.raises(ValueError, match="precision 'tf32' needs the cupy backend"):
        bk.configured(precision="tf32")
    with pytest.raises(ValueError, match="precision 'bf16' needs the cupy backend"):
        bk.configured(precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'tf32', 'bf16'; got 'fp16'"):
        bk.configured(precision="fp16")
    with pytest.raises(TypeError, match="unexpected keyword argument 'policy'"):
        bk.configured(policy="never")


@pytest.mark.parametrize("cls", [NumpyBackend, CupyBackend])
def test_overrides_keep_the_reference_signatures(cls):
    """A backend's op must take exactly the arguments of the base.py reference."""
    for name, ref in inspect.getmembers(Backend, inspect.isfunction):
        mine = getattr(cls, name)
        if mine is not ref and not name.startswith("__"):
            assert inspect.signature(mine) == inspect.signature(ref), f"{cls.__name__}.{name}"


def test_numpy_ops_match_reference(rng):
    """NumPy overrides against the plain xp reference ops, on random data."""
    fast, ref = NumpyBackend(), Backend(np)
    for dtype, (n, k) in [(np.float32, (37, 13)), (np.float64, (37, 13)), (np.float32, (5, 1)),
                          (np.float32, (300, 3)), (np.float64, (4, 1000))]:
        z = rng.standard_normal((n, k)).astype(dtype)
        b = rng.standard_normal((1, k)).astype(dtype)
        d = rng.standard_normal((n, k)).astype(dtype)
        labels = rng.integers(0, k, n)
        tol = 1e-6 if dtype == np.float32 else 1e-14  # sums in another order
        for op in ("relu", "sigmoid", "softmax"):
            np.testing.assert_allclose(getattr(fast, op)(z, out=np.empty_like(z)),
                                       getattr(ref, op)(z, out=np.empty_like(z)), rtol=tol)
        a1, a2 = z.copy(), z.copy()
        np.testing.assert_array_equal(fast.bias_relu(a1, b), ref.bias_relu(a2, b))
        out = np.maximum(z, 0)
        np.testing.assert_array_equal(fast.relu_backward(d, out, out=np.empty_like(d)),
                                      ref.relu_backward(d, out, out=np.empty_like(d)))
        got = [np.empty_like(z), np.empty_like(z), np.empty(n, dtype)]
        want = [np.empty_like(z), np.empty_like(z), np.empty(n, dtype)]
        fast.softmax_cross_entropy(z, labels, *got)
        ref.softmax_cross_entropy(z, labels, *want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
        np.testing.assert_allclose(fast.bias_grad(d, out=np.empty((1, k), dtype)),
                                   ref.bias_grad(d, out=np.empty((1, k), dtype)), rtol=tol, atol=tol)
        order = rng.permutation(n)[:max(1, n - 2)]
        for data in (z, labels):
            got = fast.take_rows(data, order, out=np.full((len(order), *data.shape[1:]), -7,
                                                          data.dtype))
            np.testing.assert_array_equal(got, ref.take_rows(data, order, out=np.empty_like(got)))
            np.testing.assert_array_equal(got, data[order])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(300, 64), (1024, 300), (7,), (2, 3, 5)])
def test_numpy_relu_is_the_references_bits(shape, dtype, rng):
    """The NumPy backend's ReLU takes its maximum against an array of zeros (a row of them past
    ZEROS_UP_TO elements), the reference's against the scalar 0: the same bits, NaN of either
    sign, signed zeros, infinities and denormals included, in place or not."""
    x = rng.standard_normal(shape).astype(dtype).reshape(-1)
    specials = np.array([np.nan, -np.nan, -0.0, 0.0, np.inf, -np.inf, -1e-40, 1e-40], dtype)
    x[:specials.size] = specials[:x.size]
    x = x.reshape(shape)
    fast = NumpyBackend()
    got, want = fast.relu(x, out=np.empty_like(x)), Backend(np).relu(x, out=np.empty_like(x))
    same_bits(got, want)
    in_place = x.copy()
    assert fast.relu(in_place, out=in_place) is in_place
    same_bits(in_place, want)


@pytest.mark.parametrize("rule", ["sgd", "sgd-momentum", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("shape", [(100_003,), (257, 300)])
def test_numpy_updates_in_pieces_equal_the_whole_update_bit_for_bit(rule, shape, rng,
                                                                     monkeypatch):
    """Optimizer rules run UPDATE_PIECE elements at a time on the NumPy backend without numba
    (with it, these sizes take passes.py's: tests/backends/test_passes.py): the same bits as the
    reference's update of the whole arrays (sizes not a multiple of the piece; a matrix, as the
    book's per-layer calls give; and a non-contiguous matrix, updated whole)."""
    from gpunn.backends import numpy_backend, passes
    from gpunn.backends import schedule as slots

    monkeypatch.setattr(passes, "why_not", lambda: "needs numba (here: pretended missing)")

    assert np.prod(shape) > numpy_backend.UPDATE_PIECE
    fast, ref = NumpyBackend(), Backend(np)
    schedule = slots.start(3, 0.01, 1e-3, 0.9, 0.999)
    slots.advance(schedule)
    for layout in ("contiguous", "strided"):
        base = rng.standard_normal((4,) + shape).astype(np.float32)
        runs = []
        for bk in (fast, ref):
            arrays = [a.copy() for a in base]
            if layout == "strided":  # every other column of a wider array
                arrays = [np.repeat(a[..., None], 2, axis=-1)[..., 0] for a in arrays]
            params, grads, state_1, state_2 = arrays
            scratch = np.empty_like(params)
            state_2 = np.abs(state_2)
            for _ in range(3):
                apply_rule(bk, rule, params, grads, state_1, state_2, schedule, scratch)
            runs.append((params, state_1, state_2))
        for got, want in zip(*runs):
            np.testing.assert_array_equal(got, want)


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None

if given is not None:
    @settings(max_examples=60, deadline=None)
    @given(st.integers(1, 40), st.integers(1, 40), st.sampled_from([np.float32, np.float64]),
           st.data())
    def test_softmax_cross_entropy_fast_path_on_any_input(n, k, dtype, data):
        """The NumPy override equals the reference for any shape and any finite logits."""
        logits = data.draw(arrays(dtype, (n, k), elements=st.floats(-50, 50, width=32)))
        labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
        fast, ref = NumpyBackend(), Backend(np)
        got = [np.full((n, k), np.nan, dtype), np.full((n, k), np.nan, dtype), np.full(n, np.nan, dtype)]
        want = [np.empty((n, k), dtype), np.empty((n, k), dtype), np.empty(n, dtype)]
        fast.softmax_cross_entropy(logits, labels, *got)
        ref.softmax_cross_entropy(logits, labels, *want)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def test_a_blas_kernel_forced_by_the_environment_is_named():
    from gpunn.backends import blas

    haswell = [{"user_api": "blas", "internal_api": "openblas", "version": "0.3.31",
                "num_threads": 2, "architecture": "Haswell"}]
    avx512 = lambda: {"avx2", "avx512f"}  # noqa: E731
    assert blas.forced_kernel_warning({}, haswell, avx512) is None
    warning = blas.forced_kernel_warning({"OPENBLAS_CORETYPE": "Haswell"}, haswell, avx512)
    assert warning.startswith("OPENBLAS_CORETYPE=Haswell in the environment makes OpenBLAS use its "
                              "Haswell kernel on a CPU with AVX-512: NumPy's GEMMs")
    assert blas.forced_kernel_warning({"OPENBLAS_L2_SIZE": "1M"}, haswell, lambda: {"avx2"}) == (
        "OPENBLAS_L2_SIZE=1M in the environment overrides what OpenBLAS chose for this CPU (it "
        "runs its Haswell kernel)")
    assert blas.describe(haswell) == "openblas 0.3.31 (2 threads, Haswell kernel)"


def test_info_names_the_blas_kernel(capsys):
    from gpunn import cli
    from gpunn.backends import blas

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"BLAS: {blas.describe()};" in out
    assert ("warning: " in out) == (blas.forced_kernel_warning() is not None)


def test_numpys_blas_is_told_from_others_loaded_beside_it():
    """SciPy's wheel brings an OpenBLAS of its own (another version); threadpoolctl may list it
    first. NumPy's is the one inside NumPy's install, and comes first."""
    import os

    from gpunn.backends import blas

    numpy_dir = os.path.dirname(np.__file__)
    site = os.path.dirname(numpy_dir)
    scipys = {"internal_api": "openblas", "version": "0.3.30",
              "filepath": os.path.join(site, "scipy.libs", "libscipy_openblas-6cdc3b4a.so")}
    wheel = {"internal_api": "openblas", "version": "0.3.31.188.0",
             "filepath": os.path.join(numpy_dir + ".libs", "libscipy_openblas64_-32a4b2a6.so")}
    inside = {"internal_api": "openblas", "version": "0.3.29",
              "filepath": os.path.join(numpy_dir, "core", "libopenblas.so")}
    lookalike = {"internal_api": "openblas", "filepath": numpy_dir + "x.libs/libopenblas.so"}
    assert [blas.is_numpys(e) for e in (scipys, wheel, inside, lookalike, {})] == \
        [False, True, True, False, False]
    assert blas.numpy_first([scipys, wheel]) == [wheel, scipys]
    assert blas.numpy_first([lookalike, scipys]) == [lookalike, scipys]  # none: as listed
