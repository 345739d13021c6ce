"""training/graph.py: warm-up, capture, replay over any callable; and the planned steps on it."""

from __future__ import annotations

import numpy as np
from support.backends import PlanningNumpy, RecordingNumpy
from support.training import OPTIMIZERS

import gpunn as nn
from gpunn.training.graph import Graph


class Device:
    """A backend stand-in: graphs when ``reason`` is None, and a capture that may fail."""

    def __init__(self, reason=None, fail=False):
        self.reason, self.fail, self.captures = reason, fail, 0

    def why_not(self, feature):
        assert feature == "graphs"
        return self.reason

    def capture(self, body):
        self.captures += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        return lambda: calls.append("replay")


calls: list[str] = []


def test_first_call_warms_up_then_replays():
    calls.clear()
    device = Device()
    graph = Graph(lambda: calls.append("body"), device, keep=lambda: "held")
    assert not graph.replaying
    for _ in range(3):
        graph()
    assert calls == ["body", "replay", "replay"] and device.captures == 1
    assert graph.replaying and graph.held == "held"


def test_a_body_called_once_is_never_recorded():
    """The last, shorter launch of a full-batch run is called once: recording it would cost more
    than it saves (it used to be recorded right after its warm-up, and never replayed)."""
    calls.clear()
    device = Device()
    graph = Graph(lambda: calls.append("body"), device)
    graph()
    assert calls == ["body"] and device.captures == 0 and not graph.replaying


def test_the_last_partial_launch_of_a_full_batch_run_is_not_recorded():
    """150 full-batch epochs: launches of 64, 64 and 22. The 64-epoch step is recorded on its
    second launch (and replayed then), the 22-epoch one runs once, unrecorded."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    recording = RecordingNumpy()
    model = spiral_model(recording)
    model.fit(X, y, epochs=150, batch_size=None, verbose=0)
    assert [step.steps for step in model.steps] == [64, 22]
    assert [step.graph.replaying for step in model.steps] == [True, False]
    assert len(recording.recorded) == 1 and len(recording.replays) == 1


def test_without_graphs_the_body_runs_each_time_silently(caplog):
    calls.clear()
    device = Device(reason="no device graphs here")
    graph = Graph(lambda: calls.append("body"), device)
    for _ in range(3):
        graph()
    assert calls == ["body"] * 3 and device.captures == 0 and not graph.replaying
    assert not caplog.records


def test_a_failed_capture_runs_eagerly_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(Graph, "said_capture_failed", False)
    calls.clear()
    graphs = [Graph(lambda: calls.append("body"), Device(fail=True)) for _ in range(2)]
    with caplog.at_level("WARNING", logger="gpunn"):
        for graph in graphs * 2:
            graph()
    assert calls == ["body"] * 4 and not any(g.replaying for g in graphs)
    warnings = [r.getMessage() for r in caplog.records if "could not capture" in r.getMessage()]
    assert warnings == ["gpunn: could not capture the training step as a CUDA graph "
                        "(RuntimeError: operation not permitted when stream is capturing); "
                        "running it eagerly"]


def spiral_model(backend):
    model = nn.Sequential([nn.Dense(2, 16, init="he", seed=1), nn.ReLU(), nn.Dense(16, 3, seed=3)])
    return model.compile(nn.SoftmaxCrossEntropy(), OPTIMIZERS[0](), backend=backend)


def test_planned_steps_record_once_then_replay_as_eager_would():
    """First fit: one 10-step launch, the warm-up; the second fit records it and replays the record."""
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    recording = RecordingNumpy()
    model, reference = spiral_model(recording), spiral_model("numpy")
    reference.backend.one_kernel_trainer = False  # the eager NumPy steps
    for _ in range(2):
        model.fit(X, y, epochs=10, batch_size=None, verbose=0)
        reference.fit(X, y, epochs=10, batch_size=None, verbose=0)
    assert len(recording.recorded) == 1 and len(recording.replays) == 1
    for a, b in zip(reference.get_params(), model.get_params()):
        assert np.array_equal(a, b)
    # the record holds the buffers it writes to, whatever the layers' caches do later
    [step] = model.steps
    held = {id(buf) for part in step.graph.held for buf in part}
    assert id(model.layers[0].output) in held and id(model.loss.dinputs) in held


def test_planned_steps_without_graphs_are_not_recorded():
    X, y = nn.datasets.spiral_data(samples=20, classes=3, seed=0)
    model = spiral_model(PlanningNumpy())
    model.fit(X, y, epochs=3, batch_size=16, verbose=0, seed=0)
    assert len(model.steps) == 2 and not any(step.graph.replaying for step in model.steps)


def test_ranks_replay_only_when_every_rank_captured():
    """Distributed training: a rank whose capture worked still runs the body as it is when
    another rank's failed (``agree`` says so), so all ranks take the same path."""
    calls.clear()
    asked = []

    def another_rank_failed(mine):
        asked.append(mine)
        return False

    graph = Graph(lambda: calls.append("body"), Device(), agree=another_rank_failed)
    for _ in range(3):
        graph()
    assert asked == [True] and not graph.replaying and calls == ["body"] * 3
    calls.clear()
    agreed = Graph(lambda: calls.append("body"), Device(), agree=lambda mine: mine)
    for _ in range(3):
        agreed()
    assert agreed.replaying and calls == ["body", "replay", "replay"]


class TwoRanks:
    size, rank = 2, 0

    def __init__(self):
        self.asked = []

    def all_agree(self, yes):
        self.asked.append(yes)
        return yes

    def allreduce(self, array):
        return array


def test_planned_steps_agree_on_capture_unless_a_rank_may_hold_nothing():
    from gpunn.training.steps import PlannedSteps

    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 4), nn.ReLU(), nn.Dense(4, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.SGD(), backend=RecordingNumpy())
    net, group = model.network, TwoRanks()
    net.group = group
    X, y = net.prepare(*nn.datasets.spiral_data(samples=2, classes=3, seed=0))
    for whole, rows, agreed in ((6, 3, [True]), (1, 1, [])):  # a batch of 1 leaves rank 1 none
        net.whole, net.share = whole, rows / whole
        group.asked.clear()
        step = PlannedSteps(net, rows, 1, model.steps.totals)
        for _ in range(2):
            step.load(X, y, 0, rows)
            step.run()
        assert group.asked == agreed and step.graph.replaying == bool(agreed)
    net.group = None
