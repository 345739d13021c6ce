"""gpunn bench: the JSON follows its schema, every contender computes the same thing, missing
peers are reported as skipped. Timings are not asserted."""

from __future__ import annotations

import gc
import json
import sys
import threading
import types

import numpy as np
import pytest

from gpunn import bench, cli
from gpunn.backends import blas, get_backend, jit
from gpunn.backends.bf16 import BF16_BITS
from gpunn.training import steps

# In the test extra; a lent GPU machine's image may lack it, and its run collects this file too.
jsonschema = pytest.importorskip("jsonschema")


def tiny_suite(peers, workloads=("small",)):
    return bench.run_suite(list(workloads), ["numpy"], peers, ["fp32"], repeats=1, seconds=0.02,
                           check_steps=5, log=lambda line: None)


def test_results_follow_the_schema():
    doc = tiny_suite(["numpy-book", "pytorch", "jax"])
    jsonschema.validate(doc, bench.SCHEMA)
    impls = {r["impl"] for r in doc["results"]}
    assert {"gpunn-numpy", "gpunn-numpy-streamed", "numpy-book"} <= impls
    gpunn_row = next(r for r in doc["results"] if r["impl"] == "gpunn-numpy")
    assert set(gpunn_row["speedup_vs"]) == {i for i in impls if not i.startswith("gpunn-")} - {"step-gemms"}
    assert doc["machine"]["gemm_ceiling"]["cpu-fp32"] > 0
    assert any(b.get("num_threads") for b in doc["machine"]["blas"])


def test_every_contender_trains_the_same_network_to_the_same_loss():
    """Same initial weights, data, optimizer and steps: the same loss, so nobody times a
    different computation."""
    doc = tiny_suite(["numpy-book", "pytorch", "jax"])
    losses = {r["impl"]: r["final_loss"] for r in doc["results"] if r["impl"] != "step-gemms"}
    reference = losses.pop("gpunn-numpy")
    assert losses, "at least the NumPy port of the book runs"
    for impl, loss in losses.items():
        assert loss == pytest.approx(reference, rel=1e-4), impl
    # and the steps did something: the loss moved from the initial one
    params = bench.initial_params(bench.WORKLOADS["small"].sizes)
    X, y = bench.workload_data(bench.WORKLOADS["small"])
    untrained = bench.numpy_book_run(bench.WORKLOADS["small"], params, X, y, "fp32", "cpu").loss()
    assert abs(untrained - reference) > 1e-4


def test_a_missing_peer_is_reported_as_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.setitem(sys.modules, "jax", None)
    doc = tiny_suite(["pytorch", "jax"])
    reasons = {s["impl"]: s["reason"] for s in doc["skipped"]}
    assert reasons["pytorch"].startswith("not importable") and reasons["jax"].startswith("not importable")
    compiled = ["gpunn-numpy-one-kernel"] if jit.why_not() is None else []
    assert [r["impl"] for r in doc["results"]] == ["gpunn-numpy", "gpunn-numpy-streamed", *compiled,
                                                   "step-gemms"]
    jsonschema.validate(doc, bench.SCHEMA)


def test_large_is_gpu_only_and_unknown_workloads_are_refused(capsys):
    doc = tiny_suite([], workloads=("large",))
    assert doc["results"] == [] and "only on a GPU" in doc["skipped"][0]["reason"]
    assert cli.main(["bench", "--workloads", "huge"]) == 2
    assert "unknown workload 'huge'" in capsys.readouterr().err


def test_cli_writes_json_markdown_and_a_png(tmp_path, capsys):
    paths = {k: tmp_path / f"out.{k}" for k in ("json", "md", "png")}
    code = cli.main(["bench", "--quick", "--repeats", "1", "--workloads", "small",
                     "--peers", "numpy-book", "--threads", "1", "--json", str(paths["json"]),
                     "--markdown", str(paths["md"]), "--plot", str(paths["png"]), "--ops"])
    assert code == 0
    doc = json.loads(paths["json"].read_text())
    jsonschema.validate(doc, bench.SCHEMA)
    assert [(p["workload"], p["impl"]) for p in doc["op_profiles"]] == [("small", "gpunn-numpy")]
    assert "| small | cpu | fp32 | gpunn-numpy |" in paths["md"].read_text()
    assert "Op profile: gpunn-numpy on small (cpu, fp32, eager path run eagerly)" \
        in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "gpunn-numpy" in out
    first = out.splitlines()[0]  # what is loaded by then (SciPy's may join NumPy's later)
    assert first.startswith("BLAS (NumPy's GEMMs, gpunn's on the CPU): ")
    entries = blas.blas_entries()  # NumPy's first: loaded first
    assert not entries or blas.describe(entries[:1]) in first
    assert np.isfinite([r["step_ms"] for r in doc["results"]]).all()


def bench_row(impl, ms=1.0, q1=1.0, q3=1.0, backend="numpy"):
    """A result row of the small workload, as the suite writes one (five repeats)."""
    return {"workload": "small", "impl": impl, "backend": backend, "precision": "fp32",
            "device": "cpu", "step_ms": ms, "step_ms_q1": q1, "step_ms_q3": q3, "repeats": 5,
            "samples_per_s": 1.0, "tflops": None, "ceiling_fraction": None, "final_loss": None}


def test_spread_is_the_interquartile_range_and_overlaps_are_flagged():
    from gpunn.bench.report import add_speedups, markdown, noise_note, quartiles

    assert quartiles([1.0, 2.0, 3.0, 100.0, 4.0]) == (2.0, 4.0)  # one slow outlier does not count
    assert quartiles([5.0]) == (5.0, 5.0)

    rows = [bench_row("gpunn-numpy", 1.0, 0.9, 1.1), bench_row("pytorch", 2.0, 1.9, 2.2),
            bench_row("jax", 1.05, 1.0, 1.2)]
    add_speedups(rows)
    assert rows[0]["speedup_vs"] == {"pytorch": 2.0, "jax": 1.05} and rows[0]["within_noise"] == ["jax"]
    doc = {"machine": {"cpu": "x", "cpu_cores": 2, "gpu": None, "versions": {}, "gemm_ceiling": {}},
           "results": rows, "skipped": []}
    assert "2.00x vs pytorch, ~1.05x vs jax" in markdown(doc)
    assert markdown(doc).startswith("Machine: x (2 cores); versions")  # no BLAS seen: none said
    blas = [{"user_api": "blas", "internal_api": "openblas", "version": "0.3.31",
             "num_threads": 2, "architecture": "SkylakeX"}]
    assert markdown({**doc, "machine": {**doc["machine"], "blas": blas}}).startswith(
        "Machine: x (2 cores); BLAS openblas 0.3.31 (2 threads, SkylakeX kernel); versions")
    scipys = {**blas[0], "version": "0.3.30", "numpy": False}  # SciPy's, loaded too: not named
    both = [scipys, {**blas[0], "numpy": True}]
    assert markdown({**doc, "machine": {**doc["machine"], "blas": both}}).startswith(
        "Machine: x (2 cores); BLAS openblas 0.3.31 (2 threads, SkylakeX kernel); versions")
    assert noise_note(doc).startswith("1 of 2 speed-ups (marked ~) are within run-to-run noise")
    jsonschema.validate({**doc, "machine": {**doc["machine"], "python": "3", "blas": []}}, bench.SCHEMA)


def test_the_row_of_gpunns_default_path_is_marked():
    """The one-kernel trainer's row where it ran (on by default wherever it can take the
    network), else the backend's steps; never a peer, an option's row or a streamed one."""
    from gpunn.bench.report import mark_defaults, markdown, row_text

    names = ["gpunn-numpy", "gpunn-numpy-streamed", "gpunn-numpy-one-kernel", "jax"]
    rows = [bench_row(name, backend="jax" if name == "jax" else "numpy") for name in names]
    mark_defaults(rows)
    assert [r.get("default") for r in rows] == [False, False, True, None]
    assert row_text(rows[2]).endswith("(gpunn's default here)") and "default" not in row_text(rows[0])
    doc = {"machine": {"cpu": "x", "cpu_cores": 2, "gpu": None, "versions": {}, "gemm_ceiling": {}},
           "results": rows, "skipped": []}
    assert "| gpunn-numpy-one-kernel (default) |" in markdown(doc)
    assert "| gpunn-numpy |" in markdown(doc)
    without = [bench_row(name) for name in names[:2]]  # no one-kernel row (numba missing, or medium)
    mark_defaults(without)
    assert [r["default"] for r in without] == [True, False]
    gpu = [bench_row(name, backend="cupy")
           for name in ("gpunn-cupy", "gpunn-cupy-untuned", "gpunn-cupy-separate", "gpunn-cupy-gemms")]
    mark_defaults(gpu)
    assert [r["default"] for r in gpu] == [True, False, False, False]


def test_the_machine_block_lists_numpys_blas_first_and_marks_it(monkeypatch):
    import os

    import threadpoolctl

    from gpunn.bench.suite import machine_info

    numpy_dir = os.path.dirname(np.__file__)
    scipys = {"user_api": "blas", "internal_api": "openblas", "version": "0.3.30",
              "filepath": os.path.join(os.path.dirname(numpy_dir), "scipy.libs", "libopenblas.so")}
    numpys = {**scipys, "version": "0.3.31", "filepath": os.path.join(numpy_dir + ".libs", "lib.so")}
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [scipys, numpys])
    listed = machine_info({}, {})["blas"]
    assert [(b["version"], b["numpy"]) for b in listed] == [("0.3.31", True), ("0.3.30", False)]
    assert "filepath" not in listed[0]


def test_a_precision_gpunn_cannot_run_here_skips_its_row_not_the_suite():
    from gpunn.bench.contenders import Skip, gpunn_run

    w = bench.WORKLOADS["small"]
    X, y = bench.workload_data(w)
    with pytest.raises(Skip, match="precision 'tf32' needs the cupy backend"):
        gpunn_run("numpy")(w, bench.initial_params(w.sizes), X, y, "tf32", "cpu")


def test_data_parallel_rows_time_one_and_n_ranks():
    from support.ranks import mpiexec

    from gpunn.bench.suite import data_parallel

    mpiexec()  # skips where the mpi extra has no MPI
    rows = data_parallel(["small"], ["numpy"], 2, repeats=1, seconds=0.02, log=lambda line: None,
                         timeout=120)
    assert [(r["impl"], r["ranks"]) for r in rows] == [("gpunn-numpy-1-rank", 1),
                                                       ("gpunn-numpy-2-ranks", 2)]
    assert rows[0]["scaling_efficiency"] == 1.0 and rows[1]["scaling_efficiency"] > 0
    doc = tiny_suite([])
    doc["results"] += rows
    jsonschema.validate(doc, bench.SCHEMA)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_step_gemms_row_does_the_gemms_of_gpunns_step_and_no_more(precision, request,
                                                                     monkeypatch):
    """The floor row's GEMMs are those of gpunn's planned step: shapes, operand types and
    transposes, in order (bf16: on the CuPy backend with its kernels run on the CPU)."""
    if precision == "fp32":
        bk, name, device = get_backend("numpy"), "numpy", "cpu"
    else:
        bk, name, device = request.getfixturevalue("emulated"), "cupy", "gpu"
        # the module (gpunn.bench.contenders is the function of that name)
        monkeypatch.setattr(sys.modules["gpunn.bench.contenders"], "get_backend", lambda _: bk)
    calls: list = []
    plain_gemm = bk.gemm

    def recording_gemm(a, b, out, trans_a=False, trans_b=False):
        calls.append((a.shape, a.dtype, b.shape, b.dtype, out.shape, trans_a, trans_b))
        return plain_gemm(a, b, out, trans_a, trans_b)

    monkeypatch.setattr(bk, "gemm", recording_gemm)  # the models' configured copies take it too
    w = bench.Workload((12, 16, 8, 3), 20)
    params = bench.initial_params(w.sizes)
    X, y = bench.workload_data(w)
    gpunn = bench.gpunn_run(name)(w, params, X, y, precision, device)
    gpunn.step()
    calls.clear()  # planning and the first step may do more than a step does
    gpunn.step()
    gpunn_step, calls[:] = list(calls), []
    bench.step_gemms_run(w, params, X, y, precision, device).step()
    assert calls == gpunn_step and len(calls) == 3 + 3 + 2
    assert all((a == b == BF16_BITS) == (precision == "bf16") for _, a, _, b, *_ in calls)


def test_the_step_gemms_row_is_a_floor_not_a_peer():
    doc = tiny_suite(["numpy-book"])
    floor = next(r for r in doc["results"] if r["impl"] == "step-gemms")
    assert floor["final_loss"] is None and floor["ceiling_fraction"] > 0
    for row in doc["results"]:
        assert "step-gemms" not in row.get("speedup_vs", {})


class TickingClock:
    """A clock that moves on by one at each mark: every call's time is known exactly."""

    def __init__(self):
        self.now = 0

    def mark(self):
        self.now += 1
        return self.now

    @staticmethod
    def seconds(start, end):
        return end - start


def test_an_op_is_charged_its_own_time_less_its_inner_calls():
    calls = bench.ops.Calls(TickingClock())
    inner = calls.timed("inner", lambda: None)
    outer = calls.timed("outer", lambda: (inner(), inner()))
    outer()  # marks: outer 1, inner 2-3, inner 4-5, outer 6
    inner()  # 7-8
    assert calls.own_seconds() == {"outer": (1, 5 - 2), "inner": (3, 3)}


def test_the_op_profile_times_the_backend_calls_of_gpunns_step():
    """On NumPy: each backend call of an eager step, counted as the step makes them (8 GEMMs for
    three Dense layers: 3 forward, 3 weight gradients, 2 input gradients), each charged its own
    time, the rest between them; the backend is left as it was."""
    w = bench.Workload((12, 16, 8, 3), 20)
    bk = get_backend("numpy")
    before = dict(bk.__dict__)
    profile = bench.op_profile(w, "tiny", "numpy", "fp32", "cpu", steps=4)
    ops = {row["op"]: row for row in profile["ops"]}
    assert (ops["gemm"]["calls"], ops["dense_forward"]["calls"], ops["sgd_update"]["calls"]) == (8, 3, 1)
    assert all(row["ms"] >= 0 for row in profile["ops"])
    assert "hold" not in ops  # the profile's own wait is no op of the step
    assert sum(row["ms"] for row in profile["ops"]) == pytest.approx(profile["step_ms"])
    assert profile["path"] == "eager" and bk.__dict__ == before
    jsonschema.validate([profile], bench.SCHEMA["properties"]["op_profiles"])


def test_the_op_profile_shows_the_bf16_conversions_a_planned_step_makes(emulated, monkeypatch):
    """On the CuPy backend with its kernels run on the CPU: the planned step's device work, run
    eagerly; under bf16, one separate conversion a step (the three weights in one: the data was
    rounded once, as it was loaded), and one bias gradient of its own (the output layer's: the
    hidden layers' come with their ReLU gradients)."""
    monkeypatch.setattr(sys.modules["gpunn.bench.contenders"], "get_backend", lambda _: emulated)
    profile = bench.op_profile(bench.Workload((12, 16, 8, 3), 20), "tiny", "cupy", "bf16", "gpu",
                               steps=2)
    ops = {row["op"]: row["calls"] for row in profile["ops"]}
    assert profile["path"] == "planned"
    assert (ops["to_bf16"], ops["gemm"], ops["dinputs_relu_bgrad"], ops["bias_grad"]) == \
        (1, 8, 2, 1)


def test_the_gpunn_cupy_rows_time_planned_steps_where_the_one_kernel_trainer_could_run(
        emulated, monkeypatch):
    """The one-kernel trainer is on by default on a GPU; the bench's gpunn-cupy row, its
    streamed row and its op profile stay on the planned steps (its own row times the other)."""
    contenders = sys.modules["gpunn.bench.contenders"]
    monkeypatch.setattr(contenders, "get_backend", lambda _: emulated)
    assert emulated.one_kernel_trainer
    w = bench.Workload((2, 16, 3), 20)
    model = contenders.gpunn_model(w, bench.initial_params(w.sizes), "cupy", "fp32")
    assert steps.choose(model.network, 20) == "planned"
    assert bench.op_profile(w, "tiny", "cupy", "fp32", "gpu", steps=1)["path"] == "planned"


def test_the_streamed_row_reads_on_workers_and_trains_as_the_unthreaded_row(emulated, monkeypatch):
    """gpunn-cupy-streamed (upload_thread on, the CuPy default): the same steps as
    gpunn-cupy-streamed-unthreaded, its batches read and copied into pinned buffers (a stand-in
    runtime here) on the uploader's workers; the unthreaded row's, on the calling thread."""
    from support.cuda_runtime import Runtime

    from gpunn.backends.cuda import transfer
    from gpunn.training.data import Streamed

    contenders = sys.modules["gpunn.bench.contenders"]
    monkeypatch.setattr(contenders, "get_backend", lambda _: emulated)
    monkeypatch.setattr(transfer, "CupyRuntime", lambda xp: Runtime())
    monkeypatch.setattr(transfer, "WORKER_MIN_BYTES", 0)  # this workload's batches are tiny
    monkeypatch.delattr(emulated, "uploader")  # the emulator's plain copies: here the real uploader
    readers = {}
    rows_of = Streamed.rows
    rows = contenders.contenders(["cupy"], [], "gpu")
    w = bench.Workload((2, 16, 3), 20)
    X, y = bench.workload_data(w)
    losses = {}
    for impl in ("gpunn-cupy-streamed", "gpunn-cupy-streamed-unthreaded"):
        def read(self, index, out=None, impl=impl):
            readers.setdefault(impl, set()).add(threading.current_thread().name.split("_")[0])
            return rows_of(self, index, out)

        monkeypatch.setattr(Streamed, "rows", read)
        run = rows[impl][1](w, bench.initial_params(w.sizes), X, y, "fp32", "gpu")
        for _ in range(6):
            run.step()
        run.sync()
        losses[impl] = run.loss()
        del run
        gc.collect()  # the row's feed ends, and with it the workers
    assert losses["gpunn-cupy-streamed"] == losses["gpunn-cupy-streamed-unthreaded"]
    assert readers == {"gpunn-cupy-streamed": {"gpunn-upload"},
                       "gpunn-cupy-streamed-unthreaded": {"MainThread"}}
    assert not [t for t in threading.enumerate() if t.name.startswith("gpunn-upload")]


def test_the_device_clock_reads_cuda_events(monkeypatch):
    """DeviceClock's glue, against a stand-in for CuPy's events (milliseconds apart)."""
    now, waited = [0.0], []

    class Event:
        def record(self):
            self.at, now[0] = now[0], now[0] + 2.5

    cuda = types.SimpleNamespace(
        Event=Event, get_elapsed_time=lambda start, end: end.at - start.at,
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: waited.append(1)))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    clock = bench.ops.DeviceClock()
    start, end = clock.mark(), clock.mark()
    clock.settle()
    assert clock.seconds(start, end) == 2.5e-3 and waited == [1]


def test_a_failed_op_profile_is_reported_and_the_bench_goes_on(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no events here")

    monkeypatch.setattr(sys.modules["gpunn.bench.suite"], "op_profile", broken)
    doc = bench.run_suite(["small"], ["numpy"], [], ["fp32"], repeats=1, seconds=0.02,
                          log=lambda line: None, ops=True)
    assert doc["op_profiles"] == [] and any(r["impl"] == "gpunn-numpy" for r in doc["results"])
    assert {"impl": "gpunn-numpy op profile", "workload": "small",
            "reason": "RuntimeError: no events here"} in doc["skipped"]


def test_a_contender_that_raises_is_reported_as_failed_and_the_bench_goes_on(monkeypatch, tmp_path,
                                                                          capsys):
    """One contender raising while it is set up, another while it is timed (after the check
    steps), a third in the book's run: each is listed as failed with its error (and its
    traceback in the output), the others are measured and written, and the command exits 1."""
    suite = sys.modules["gpunn.bench.suite"]
    real = suite.contenders

    def broken_contenders(backends, peers, device):
        out = real(backends, peers, device)
        backend, streamed = out["gpunn-numpy-streamed"]

        def fails_when_timed(*args):
            run, steps = streamed(*args), [0]

            def step():
                steps[0] += 1
                if steps[0] > 5:  # the check steps pass; the timed ones do not
                    raise RuntimeError("illegal memory access")
                run.step()
            return bench.Run(step, run.sync, run.loss)

        def fails_at_once(*args):
            raise ValueError("bad plan")

        out["gpunn-numpy-streamed"] = (backend, fails_when_timed)
        out["numpy-book"] = ("numpy", fails_at_once)
        return out

    real_book = suite.book_run

    def book_run(impl, device):
        if impl == "gpunn-numpy":
            raise RuntimeError("book went wrong")
        return real_book(impl, device)

    monkeypatch.setattr(suite, "contenders", broken_contenders)
    monkeypatch.setattr(suite, "book_run", book_run)
    paths = {k: tmp_path / f"out.{k}" for k in ("json", "md")}
    code = cli.main(["bench", "--quick", "--repeats", "1", "--workloads", "small,book",
                     "--peers", "numpy-book", "--threads", "1", "--json", str(paths["json"]),
                     "--markdown", str(paths["md"])])
    out = capsys.readouterr().out
    assert code == 1
    doc = json.loads(paths["json"].read_text())
    jsonschema.validate(doc, bench.SCHEMA)
    assert doc["failed"] == [
        {"impl": "numpy-book", "workload": "small", "precision": "fp32",
         "error": "ValueError: bad plan"},
        {"impl": "gpunn-numpy-streamed", "workload": "small", "precision": "fp32",
         "error": "RuntimeError: illegal memory access"},
        {"impl": "gpunn-numpy", "workload": "book", "precision": "fp32",
         "error": "RuntimeError: book went wrong"}]
    rows = {(r["workload"], r["impl"]) for r in doc["results"]}
    assert ("small", "gpunn-numpy") in rows and ("small", "step-gemms") in rows
    assert not rows & {("small", "gpunn-numpy-streamed"), ("small", "numpy-book"),
                       ("book", "gpunn-numpy")}
    assert "FAILED: gpunn-numpy-streamed (small, fp32): RuntimeError: illegal memory access" in out
    assert "Traceback (most recent call last)" in out and "in fails_when_timed" not in out
    assert "in step" in out  # the timed step's own frame
    assert "Failed: numpy-book (small, fp32): ValueError: bad plan" in paths["md"].read_text()


def test_steps_are_timed_in_one_run_waited_for_once(monkeypatch):
    """On a clock that a step moves by 1 ms: the time per step, from a run of at least
    ``seconds`` with one wait at its end (shorter runs before it only size it), not a wait
    every few steps that would drain the device's queue."""
    now, events = [0.0], []

    def step():
        now[0] += 1e-3
        events.append("step")

    monkeypatch.setattr(sys.modules["gpunn.bench.suite"].time, "perf_counter", lambda: now[0])
    ms = bench.time_steps(bench.Run(step, lambda: events.append("sync"), lambda: 0.0), 0.05)
    runs = "".join("s" if e == "step" else "|" for e in events).split("|")[:-1]
    assert ms == pytest.approx(1.0)
    assert len(runs[-1]) >= 50 and len(runs) <= 4  # warm-up, sizing runs, the timed run


def compiled_trainer_or_skip():
    reason = get_backend("numpy").configured(one_kernel_trainer=True).why_not("one_kernel_trainer")
    if reason:
        pytest.skip(reason)


def test_the_book_profile_splits_fits_epoch_into_the_trainers_time_and_the_rest(monkeypatch):
    """With the trainer slowed by 0.5 ms an epoch (a sleep inside it), the profile charges about
    that to the trainer, per epoch, from one launch of 1024 epochs, and little to the rest."""
    import time

    compiled_trainer_or_skip()
    numpy_backend = type(get_backend("numpy"))
    train = numpy_backend.train_in_one_kernel
    # The sleep is ten times the book's epoch on a slow CPU, so the trainer's own time (which
    # a loaded CI runner has stretched to 27 us an epoch) moves the figures by a few percent.
    sleep_ms = 0.5

    def slowed(self, X, y, params, grads, states, schedule, totals, epochs, rule, outs):
        time.sleep(sleep_ms * 1e-3 * epochs)
        return train(self, X, y, params, grads, states, schedule, totals, epochs, rule, outs)

    monkeypatch.setattr(numpy_backend, "train_in_one_kernel", slowed)
    profile = bench.ops.book_profile("numpy", "cpu", epochs=2048)
    jsonschema.validate([profile], bench.SCHEMA["properties"]["op_profiles"])
    trainer, rest = profile["ops"]
    assert (trainer["op"], trainer["calls"], rest["op"]) == ("train_in_one_kernel", 1 / 1024,
                                                              bench.ops.BETWEEN)
    assert sleep_ms <= trainer["ms"] < sleep_ms * 1.5
    # The trainer's launch and fit's epochs are timed apart, and the sleep overshoots (and the
    # trainer runs) by varying amounts: with the host's rest near zero, that noise may tip it
    # below (measured once in a full run: -2.6e-5 ms an epoch against 0.05).
    assert -0.05 * trainer["ms"] <= rest["ms"] < 0.2 * trainer["ms"]
    assert profile["step_ms"] == pytest.approx(trainer["ms"] + rest["ms"])
    assert (profile["path"], profile["steps"], profile["impl"]) == ("one-kernel", 2048,
                                                                    "gpunn-numpy-one-kernel")


def test_an_op_called_once_in_many_steps_reads_as_a_fraction():
    """The book profile's trainer is launched once every 1024 epochs: "1/1024", not 0.000976562,
    in the terminal and the Markdown; whole counts as they are."""
    profile = {"workload": "book", "impl": "gpunn-cupy-one-kernel", "device": "gpu",
               "precision": "fp32", "steps": 2048, "step_ms": 0.0196, "path": "one-kernel",
               "ops": [{"op": "train_in_one_kernel", "calls": 1 / 1024, "ms": 0.0171, "share": 0.873},
                       {"op": "gemm", "calls": 7.0, "ms": 0.002, "share": 0.1},
                       {"op": "sgd_update", "calls": 0.4, "ms": 0.0005, "share": 0.027}]}
    text = bench.report.op_profile_text(profile).splitlines()
    assert text[1].split()[:2] == ["train_in_one_kernel", "1/1024x"]
    assert text[2].split()[:2] == ["gemm", "7x"] and text[3].split()[:2] == ["sgd_update", "0.4x"]
    machine = {"gpu": "", "cpu": "x86", "cpu_cores": 2, "versions": {}, "gemm_ceiling": {}}
    doc = {"machine": machine, "results": [], "skipped": [], "op_profiles": [profile]}
    assert "| train_in_one_kernel | 1/1024 | 0.0171 | 87.3% |" in bench.report.markdown(doc)


def test_bench_ops_profiles_the_books_run_with_the_one_kernel_trainer():
    compiled_trainer_or_skip()
    lines = []
    doc = bench.run_suite(["book"], ["numpy"], [], ["fp32"], repeats=1, seconds=0.02,
                          log=lines.append, ops=True)
    jsonschema.validate(doc, bench.SCHEMA)
    assert [(p["workload"], p["impl"]) for p in doc["op_profiles"]] == [
        ("book", "gpunn-numpy-one-kernel")]
    title = "gpunn-numpy-one-kernel on the book's run (cpu, fp32, 2048 epochs in fit): "
    assert any(line.startswith(f"ops     {title}") for line in lines)
    assert f"Op profile: {title}" in bench.markdown(doc)


def train_rows(contenders, impls, steps, log):
    """Each of the GPU rows ``impls`` trains the 2-16-3 network ``steps`` steps on 20 rows;
    returns each one's loss after, and what ``log`` gathered while it trained."""
    rows = contenders.contenders(["cupy"], [], "gpu")
    w = bench.Workload((2, 16, 3), 20)
    X, y = bench.workload_data(w)
    losses, logs = {}, {}
    for impl in impls:
        log.clear()
        run = rows[impl][1](w, bench.initial_params(w.sizes), X, y, "fp32", "gpu")
        for _ in range(steps):
            run.step()
        losses[impl], logs[impl] = run.loss(), list(log)
    return losses, logs


def test_the_untuned_row_alone_leaves_cublas_to_choose(emulated, monkeypatch):
    """gpunn-cupy (tuned GEMMs: the CuPy backend's default) sends its GEMMs to cuBLASLt to be
    tuned, cuBLAS's own choice given to be timed beside cuBLASLt's (a stand-in here, which
    declines them, as where cuBLAS timed fastest, so they fall back to the same GEMMs);
    gpunn-cupy-untuned leaves cuBLAS to choose."""
    contenders = sys.modules["gpunn.bench.contenders"]
    monkeypatch.setattr(contenders, "get_backend", lambda _: emulated)
    asked = []

    def matmul(a, b, out, trans_a, trans_b, tf32, tune, fallback=None):
        asked.append((tune, callable(fallback)))
        return False

    monkeypatch.setattr(emulated, "epilogues",
                        types.SimpleNamespace(available=True, matmul=matmul))
    losses, calls = train_rows(contenders, ("gpunn-cupy", "gpunn-cupy-untuned"), 3, asked)
    assert calls["gpunn-cupy-untuned"] == [] and calls["gpunn-cupy"]
    assert set(calls["gpunn-cupy"]) == {(True, True)}
    assert losses["gpunn-cupy"] == losses["gpunn-cupy-untuned"]


def test_the_gemms_row_alone_keeps_the_output_layer_in_gemms(emulated, monkeypatch):
    """gpunn-cupy lets the output layer's products take the narrow kernels where they time
    faster (here: told they do); gpunn-cupy-gemms switches them off, so every product is a GEMM;
    it is skipped where the output layer is too wide for them (large's 1000 outputs), being
    gpunn-cupy there."""
    contenders = sys.modules["gpunn.bench.contenders"]
    monkeypatch.setattr(contenders, "get_backend", lambda _: emulated)
    monkeypatch.setattr(emulated.narrow_choice, "prefer", True)
    launched = []
    for name in ("narrow_forward", "narrow_weight_grads", "narrow_dinputs_relu_bgrad"):
        real = getattr(emulated.kernels, name)
        monkeypatch.setattr(emulated.kernels, name,
                            lambda *a, real=real, name=name: (launched.append(name), real(*a))[1])
    losses, calls = train_rows(contenders, ("gpunn-cupy", "gpunn-cupy-gemms"), 2, launched)
    assert {impl: sorted(set(names)) for impl, names in calls.items()} == {
        "gpunn-cupy": ["narrow_dinputs_relu_bgrad", "narrow_forward", "narrow_weight_grads"],
        "gpunn-cupy-gemms": []}
    assert losses["gpunn-cupy"] == pytest.approx(losses["gpunn-cupy-gemms"], rel=1e-5)
    wide = bench.Workload((2, 16, 17), 20)
    X, y = bench.workload_data(wide)
    row = contenders.contenders(["cupy"], [], "gpu")["gpunn-cupy-gemms"][1]
    with pytest.raises(contenders.Skip, match="17 outputs are more than the narrow kernels take"):
        row(wide, bench.initial_params(wide.sizes), X, y, "fp32", "gpu")


def test_the_overlap_row_alone_puts_weight_gradients_on_a_second_stream(emulated, monkeypatch):
    """gpunn-cupy-overlap switches overlap_weight_grads on: in a recorded step (here: told it is
    one) each Dense layer's weight gradients go to the side stream (a stand-in runtime that logs
    each use); gpunn-cupy leaves them on the one stream. The same training either way."""
    from support.cuda_runtime import Runtime

    from gpunn.backends.cuda.streams import SideStream

    contenders = sys.modules["gpunn.bench.contenders"]
    monkeypatch.setattr(contenders, "get_backend", lambda _: emulated)
    runtime = Runtime(stream_name="side")
    side = SideStream(runtime)
    side.make()
    monkeypatch.setattr(emulated, "side", side)
    monkeypatch.setattr(emulated, "capturing", lambda: True)
    losses, calls = train_rows(contenders, ("gpunn-cupy", "gpunn-cupy-overlap"), 2, runtime.log)
    assert calls["gpunn-cupy"] == []
    assert calls["gpunn-cupy-overlap"].count(("use", "side")) == 2 * 2  # two Dense layers a step
    assert losses["gpunn-cupy"] == losses["gpunn-cupy-overlap"]


def benchmark_script(name: str) -> types.ModuleType:
    """benchmarks/<name>.py, loaded as a module (the folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / f"{name}.py"
    spec_of = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec_of)
    spec_of.loader.exec_module(script)
    return script


def test_the_gemm_tuning_script_reports_each_tuned_problem(monkeypatch, capsys):
    """benchmarks/gemm_tuning.py (run by make gpu-check): one line per problem a tuned step
    planned, each algorithm's time (and cuBLAS's, for plain GEMMs) with the kept one starred,
    failures named, untuned and earlier problems left out; then each narrow-kernel choice and
    each epilogue choice the step timed, the faster starred. Stand-ins for the GPU here."""
    from gpunn.backends.cuda.cublaslt import Spec

    script = benchmark_script("gemm_tuning")

    def spec(epilogue, m, candidates, operands=np.float32, out=np.float32):
        return Spec(epilogue, m, 1024, 784, 1024, 784, m, False, True, 0, np.dtype(operands),
                    np.dtype(out), False, 256, 256, 256, 0, 0, candidates)

    def problem(timings, chosen, fallback_ms=None, declined=False, offered=None, count=None,
                splits=(), waves=0.5):
        count = count or len(timings)
        return types.SimpleNamespace(
            count=count, offered=offered or count, chosen=chosen, timings=timings,
            fallback_ms=fallback_ms, declined=declined,
            splits=[(1, 0)] * (count - len(splits)) + list(splits),
            results={"waves_count": np.array([waves] + [1.0] * (count - 1), np.float32)})

    earlier = spec(1, 7, 8)
    problems = {earlier: types.SimpleNamespace()}
    made = {spec(6, 1024, 8): problem({0: 0.25, 1: 0.125}, 1, count=3),
            spec(1, 10, 1): types.SimpleNamespace(),
            spec(1, 1024, 8, np.uint16): problem({0: 0.5, 1: 0.25, 2: 0.375}, 1, 0.75,
                                                 offered=1, splits=[(2, 2), (4, 1)], waves=0.25),
            spec(1, 512, 8): problem({0: 0.5, 1: 0.25}, 1, 0.125, True),
            spec(134, 1024, 8, np.uint16, np.uint16): problem({0: 0.375}, 0)}
    bf16, f32 = np.dtype(np.uint16), np.dtype(np.float32)
    epilogue_times = {("forward", "bias", (4, 8), (8, 2), f32, f32, True, False, "auto"): (1.0, 2.0)}
    made_epilogues = {
        ("forward", "relu_mask", (1024, 784), (784, 1024), bf16, bf16, True, False, "auto"):
            (0.25, 0.375),
        ("dinputs", (1024, 1024), (1024, 1024), f32, f32, True, True, "auto"): (0.5, 0.25)}
    narrow = {("forward", (4, 8), (8, 2)): (0.5, 0.25)}
    made_narrow = {("forward", (1024, 1024), (1024, 10), "more"): (0.0625, 0.125),
                   ("weight_grads", (1024, 1024), (1024, 10), "more"): (0.25, 0.125)}
    transposes = {("weight_grads", (4, 8), (4, 2)): (0.5, 0.25)}
    made_transposes = {("weight_grads", (8192, 4096), (8192, 4096)): (0.75, 1.0)}
    monkeypatch.setattr(script, "get_backend",
                        lambda name: types.SimpleNamespace(
                            epilogues=types.SimpleNamespace(problems=problems),
                            narrow_choice=types.SimpleNamespace(times=narrow),
                            transpose_choice=types.SimpleNamespace(times=transposes),
                            epilogue_choice=types.SimpleNamespace(times=epilogue_times)))
    steps = []

    def gpunn_run(backend, tune_gemms):
        assert (backend, tune_gemms) == ("cupy", True)

        def make(w, params, X, y, precision, device):
            def step():
                steps.append(precision)
                problems.update(made)
                narrow.update(made_narrow)
                transposes.update(made_transposes)
                epilogue_times.update(made_epilogues)
            return types.SimpleNamespace(step=step, sync=lambda: None)
        return make

    monkeypatch.setattr(script, "gpunn_run", gpunn_run)
    monkeypatch.setattr(script, "workload_data", lambda w: (None, None))
    assert script.tuned("small", "tf32") == [
        "small  tf32 relu_bias     m=1024 n=1024 k=784 T=01 float32: 3 offered (waves 0.50), "
        "0 split-K; ms 0.2500 0.1250* failed",
        "small  tf32 plain         m=1024 n=1024 k=784 T=01 bf16 -> float32: 1 offered "
        "(waves 0.25), 2 split-K; ms 0.5000 0.2500*/k2c 0.3750/k4i; cuBLAS 0.7500",
        "small  tf32 plain         m=512 n=1024 k=784 T=01 float32: 2 offered (waves 0.50), "
        "0 split-K; ms 0.5000 0.2500; cuBLAS 0.1250*",
        "small  tf32 relu_aux_bias m=1024 n=1024 k=784 T=01 bf16 -> bf16: 1 offered (waves 0.50), "
        "0 split-K; ms 0.3750*",
        "small  tf32 narrow forward      1024 rows, 1024 inputs, 10 outputs: kernel ms 0.0625*, "
        "GEMM path 0.1250",
        "small  tf32 narrow weight_grads 1024 rows, 1024 inputs, 10 outputs: kernel ms 0.2500, "
        "GEMM path 0.1250*",
        "small  tf32 weight_grads from a transposed copy: 8192 rows, 4096 inputs, 4096 outputs: "
        "copy + GEMM ms 0.7500*, GEMM as it is 1.0000",
        "small  tf32 epilogue forward relu_mask  1024 rows, 784 inputs, 1024 outputs, bf16 -> bf16: "
        "fused ms 0.2500*, separate 0.3750",
        "small  tf32 epilogue dinputs drelu_bgrad 1024 rows, 1024 inputs, 1024 outputs, "
        "float32 -> float32: fused ms 0.5000, separate 0.2500*"]
    assert steps == ["tf32", "tf32"]


def test_a_case_of_the_gemm_tuning_script_that_raises_leaves_the_others_reported(monkeypatch,
                                                                                capsys):
    """A workload and precision whose tuned step raises prints FAILED and its traceback; the
    cases after it still report, and the script exits 1."""
    script = benchmark_script("gemm_tuning")

    def tuned(workload, precision):
        if precision == "tf32":
            raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")
        return [f"{workload} {precision}: one line"]

    monkeypatch.setattr(script, "tuned", tuned)
    monkeypatch.setattr(sys, "argv", ["gemm_tuning.py", "--workloads", "medium,large",
                                      "--precision", "tf32,bf16"])
    assert script.main() == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith(("medium", "large"))] == [
        "medium tf32: FAILED", "medium bf16: one line", "large tf32: FAILED", "large bf16: one line"]
    assert "RuntimeError: CUBLAS_STATUS_EXECUTION_FAILED" in lines
    monkeypatch.setattr(script, "tuned", lambda workload, precision: ["fine"])
    assert script.main() == 0


def test_the_read_ahead_script_times_streamed_steps_with_each_count_of_workers(emulated, monkeypatch):
    """benchmarks/read_ahead.py (run by make gpu-check): resident, then streamed with each count
    of upload workers (the uploader built with that many batches ahead and 2 slots more) and of
    batches to a start, each with the calling thread's CPU time and time in the uploader's
    finish, then READ_AHEAD, the grouping and finish as they were. The CuPy backend's kernels on
    the CPU and a stand-in runtime here."""
    from support.cuda_runtime import Runtime

    from gpunn.backends.cuda import transfer

    script = benchmark_script("read_ahead")
    monkeypatch.setattr(sys.modules["gpunn.bench.contenders"], "get_backend", lambda _: emulated)
    monkeypatch.setattr(transfer, "CupyRuntime", lambda xp: Runtime())
    monkeypatch.setattr(transfer, "WORKER_MIN_BYTES", 0)  # this workload's batches are tiny
    monkeypatch.delattr(emulated, "uploader")  # the emulator's plain copies: here the real uploader
    monkeypatch.setattr(script, "WORKLOADS", {"tiny": bench.Workload((2, 16, 3), 20)})
    built, made = [], transfer.PinnedUploader
    finish = made.finish

    def uploader(*args, **kwargs):
        up = made(*args, **kwargs)
        built.append((up.ahead, len(up.slots), up.batches))
        return up

    monkeypatch.setattr(transfer, "PinnedUploader", uploader)
    grouping = transfer.batches_per_start
    lines = script.report("tiny", "fp32", [1, 4], [1, 3], repeats=1, seconds=0.0)
    assert [line.split(":")[0] for line in lines] == \
        ["tiny fp32 resident"] + [f"tiny fp32 streamed, {w} workers, {b} batches a start"
                                  for w in (1, 4) for b in (1, 3)]
    assert " ms (" in lines[2] and "of resident's speed); calling thread " in lines[1]
    # Resident steps hand nothing over; streamed ones wait in finish for each start.
    in_finish = [float(line.split(", ")[-1].split(" ms in finish")[0]) for line in lines]
    assert in_finish[0] == 0.0 and min(in_finish[1:]) > 0.0
    assert all(" ms of CPU a step" in line for line in lines)
    assert built == [(1, 3, 1), (1, 3, 3), (4, 6, 1), (4, 6, 3)]
    assert (transfer.READ_AHEAD, transfer.BACKGROUND_SLOTS) == (3, 5)
    assert transfer.batches_per_start is grouping and made.finish is finish
    assert not [t for t in threading.enumerate() if t.name.startswith("gpunn-upload")]
