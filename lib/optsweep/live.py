"""What a run in flight reports about itself: step, loss and throughput, for progress lines while a sweep runs.

A trainer calls `report_progress(...)` now and then (the default trainer at each loss sync). Whoever runs
the trainer decides where the reports go with `reporting_to(callback)`; with nobody listening a report costs
nothing. The Ray backend keeps each actor's latest report and prints them as progress lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable, Iterator


@dataclasses.dataclass(frozen=True)
class RunProgress:
    step: int
    steps: int
    loss: float
    tokens_per_s: float
    elapsed_s: float  # since the run started

    @property
    def eta_s(self) -> float | None:
        """Seconds to the run's last step at the pace so far (evaluation included)."""
        return self.elapsed_s * (self.steps - self.step) / self.step if self.step else None


ProgressCallback = Callable[[RunProgress], None]

_listener: tuple[ProgressCallback, float] | None = None  # (callback, the run's start time)


@contextlib.contextmanager
def reporting_to(callback: ProgressCallback) -> Iterator[None]:
    """Route the reports of the run trained inside this block to `callback`."""
    global _listener
    previous, _listener = _listener, (callback, time.perf_counter())
    try:
        yield
    finally:
        _listener = previous


def report_progress(step: int, steps: int, loss: float, tokens_per_s: float) -> None:
    """Called by a trainer: `step` of `steps` done, the latest train loss and the training throughput."""
    if _listener is not None:
        callback, started = _listener
        callback(RunProgress(step, steps, float(loss), float(tokens_per_s), time.perf_counter() - started))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_line(key: str, place: str, progress: RunProgress | None) -> str:
    """One in-flight run: `run 3f2a9c1e on 10.0.0.5 GPU 2: step 120/800 loss 4.2130 12.3k tok/s ETA 3m20s`."""
    head = f"run {key[:8]} on {place}"
    if progress is None:
        return f"{head}: starting"
    return (f"{head}: step {progress.step}/{progress.steps} loss {progress.loss:.4f} "
            f"{progress.tokens_per_s / 1e3:.1f}k tok/s ETA {_duration(progress.eta_s)}")
