"""A stand-in for the CUDA runtime that the pinned uploader (gpunn/backends/cuda/transfer.py) and
the side stream (streams.py) call: streams and events that log each call and the thread that made
it; "device" buffers are NumPy arrays, copied into at once."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np


class Stream:
    def __init__(self, runtime, name):
        self.runtime, self.name = runtime, name

    def wait_event(self, event):
        self.runtime.called(("wait", self.name, event.name))


class Event:
    def __init__(self, runtime, name):
        self.runtime, self.name = runtime, name

    def record(self, stream):
        self.runtime.called(("record", self.name, stream.name))

    def synchronize(self):
        time.sleep(self.runtime.wait)  # a GPU's copy taking its time: other threads run meanwhile
        self.runtime.called(("sync", self.name))  # logged as the wait ends


class Runtime:
    """Streams and events that log; "device" buffers are NumPy arrays copied into at once."""

    def __init__(self, wait=0.0, stream_name="copy"):
        self.log, self.events, self.threads, self.wait = [], 0, set(), wait
        self.compute = Stream(self, "compute")
        self.current, self.stream_name = self.compute, stream_name

    def called(self, entry):
        self.log.append(entry)
        self.threads.add(threading.get_ident())

    def stream(self):
        return Stream(self, self.stream_name)

    def event(self):
        self.events += 1
        return Event(self, f"e{self.events}")

    def current_stream(self):
        return self.current

    @contextlib.contextmanager
    def using(self, stream):
        """``stream`` current for the block, as ``with stream:`` makes a CuPy stream."""
        before, self.current = self.current, stream
        self.called(("use", stream.name))
        try:
            yield stream
        finally:
            self.current = before
            self.called(("used", stream.name))

    def pinned(self, shape, dtype):
        return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype)

    def device(self, shape, dtype):
        return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype)

    def copy(self, device, host, stream):
        self.called(("copy", stream.name))
        device[...] = host
