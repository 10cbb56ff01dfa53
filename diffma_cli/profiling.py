"""Named stages of a pipeline: profiler ranges always, per-stage timing only when a benchmark asks.

`with stage("vae"):` marks a stage in the product code. It opens a `torch.profiler.record_function` range
named `diffma.vae`, so a trace taken with `torch.profiler` shows the stages by name; outside a profiler the
range costs a few microseconds. A benchmark that wants seconds per stage without a profiler installs one
observer for the duration of a call, and the product's signatures carry nothing for it:

    timer = StageTimer(device)
    with observe_stages(timer):
        convert_array(...)
    timer.seconds()   # {"prepare": ..., "vae": ..., ...}

The observer lives in a context variable: it applies to this thread (and task) only, and is removed on exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

import torch

Observer = Callable[[str], AbstractContextManager]

_observer: ContextVar[Observer | None] = ContextVar("diffma_stage_observer", default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark the enclosed code as pipeline stage `name` (a profiler range, and the observer if one is set)."""
    observer = _observer.get()
    with torch.profiler.record_function(f"diffma.{name}"):
        if observer is None:
            yield
        else:
            with observer(name):
                yield


@contextmanager
def observe_stages(observer: Observer) -> Iterator[Observer]:
    """Call `observer(name)` around every stage entered inside this block; restores the previous one."""
    token = _observer.set(observer)
    try:
        yield observer
    finally:
        _observer.reset(token)


class StageTimer:
    """An observer that accumulates time per stage.

    On CUDA it records CUDA events (no synchronisation while the pipeline runs); on the CPU wall-clock time.
    `seconds()` synchronises once and returns {stage: seconds}.
    """

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.events: dict[str, list] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.setdefault(name, []).append((start, end))
        else:
            began = time.perf_counter()
            yield
            self.events.setdefault(name, []).append(time.perf_counter() - began)

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {name: sum(start.elapsed_time(end) for start, end in pairs) / 1000  # ms -> s
                    for name, pairs in self.events.items()}
        return {name: float(sum(times)) for name, times in self.events.items()}
