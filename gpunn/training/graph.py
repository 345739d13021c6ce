"""Warm up, capture, replay: any callable's device work recorded once as a CUDA graph and replayed
after, the way tinygrad's TinyJit wraps a function. It knows nothing of models.

The first call runs the body as it is (kernels compile, buffers are allocated); the second
captures the body and replays the record, and each later call replays it: one launch instead of
dozens. A body called once (the last, shorter launch of a full-batch run) is never recorded, since
recording it would cost more than running it. Where the backend
has no graphs, or the capture fails (said once per process; in distributed training, on any
rank), the body keeps running as it is, with the same kernels, so the numbers are the same either
way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("gpunn")


class Graph:
    """``body`` on ``backend``: run once, then recorded and replayed. ``keep`` gives what the
    record must hold on to when it is made: the buffers it writes, whatever their owners do
    later, so that their memory is never handed to anything else."""

    #: Whether a failed capture was reported yet (once per process is enough).
    said_capture_failed = False

    def __init__(self, body: Callable[[], Any], backend: Any,
                 keep: Callable[[], Any] = lambda: None,
                 agree: Callable[[bool], bool] | None = None, capture: bool = True) -> None:
        self.body, self.backend, self.keep = body, backend, keep
        #: Distributed training: whether every rank captured (each rank's outcome in, all out),
        #: so that all replay or none does; ``capture=False``: never record.
        self.agree, self.may_capture = agree, capture
        self.warmed_up = False
        self.tried = False  # whether the capture was tried (once: a failure is not retried)
        self.replay: Callable[[], Any] | None = None
        self.held: Any = None

    @property
    def replaying(self) -> bool:
        """Whether calls replay a record (False before the second call, or without graphs)."""
        return self.replay is not None

    def __call__(self) -> None:
        if self.warmed_up and not self.tried:  # the second call: record, then replay
            self._record()
        if self.replay is not None:
            self.replay()
            return
        self.body()
        self.warmed_up = True

    def _record(self) -> None:
        self.tried = True
        self.replay = self._capture() if self.may_capture else None
        if self.agree is not None and not self.agree(self.replay is not None):
            self.replay = None  # another rank could not: all run the body as it is
        if self.replay is not None:
            self.held = self.keep()

    def _capture(self) -> Callable[[], Any] | None:
        if self.backend.why_not("graphs") is not None:
            return None
        try:
            return self.backend.capture(self.body)
        except Exception as exc:  # a capture that fails leaves the body as it is, which is right
            if not Graph.said_capture_failed:
                Graph.said_capture_failed = True
                _log.warning("gpunn: could not capture the training step as a CUDA graph "
                             "(%s: %s); running it eagerly", type(exc).__name__, exc)
            return None
