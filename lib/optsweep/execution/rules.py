"""Which workers go, the rules both executors apply: a run is retried once; a device error, or a streak of fast
failures, retires its worker; a run without progress for too long is killed (the watchdog)."""

from __future__ import annotations

import dataclasses
import re
import sys
import time

from ..params.settings import ParamsError
from .tasks import Attempt, Outcome, Task, WaitingTasks

ATTEMPTS = 2  # a crashed run is retried once, then reported as failed
FAST_FAILURE_S = 60.0  # a run that fails sooner never really trained: a streak of them is the worker's fault
# What a broken device raises (torch's AcceleratorError and CUDA/cuDNN/cuBLAS/NCCL status texts, ECC and Xid
# reports): the worker's CUDA context is lost, so whatever it trains next fails the same way.
DEVICE_ERROR = re.compile(r"AcceleratorError|CUDA error|cuDNN error|CUBLAS_STATUS|CUDNN_STATUS|NCCL error"
                          r"|illegal memory access|uncorrectable ECC|\bXid\b")


def _line_of(error: str, pattern: re.Pattern[str] | None = None) -> str:
    """The line of a traceback that says what happened: the one `pattern` matches, else the last."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()] or [""]
    return next((line for line in lines if pattern is not None and pattern.search(line)), lines[-1])


@dataclasses.dataclass
class FailureStreak:
    """The retire rule for one worker, which keeps count of its fast failures in a row."""

    limit: int  # study.train.retire_after_fast_failures
    fast_failures: int = 0

    def retire_reason(self, attempt: Attempt) -> str | None:
        """Why the worker that made `attempt` must be retired, or None while it may train on."""
        if attempt.error is None:
            self.fast_failures = 0
            return None
        if attempt.device_check is not None:
            return f"its device failed the check after a failed run ({attempt.device_check})"
        if DEVICE_ERROR.search(attempt.error):
            return f"a device error ({_line_of(attempt.error, DEVICE_ERROR)})"
        self.fast_failures = self.fast_failures + 1 if attempt.wall_s < FAST_FAILURE_S else 0
        if self.fast_failures >= self.limit:
            return (f"{self.fast_failures} runs in a row failed within {FAST_FAILURE_S:.0f} s "
                    f"({_line_of(attempt.error)})")
        return None


def settle(task: Task, number: int, attempt: Attempt, waiting: WaitingTasks, worker: int) -> Outcome | None:
    """The outcome of attempt `number` at `task` if it is final; a failed attempt with tries left waits to be
    retried on a worker other than `worker`."""
    if attempt.error is not None and number < ATTEMPTS:
        waiting.retry(task, number + 1, failed_on=worker)
        return None
    return Outcome(task.key, task.spec, attempt.result, attempt.error, number, attempt.wall_s)


@dataclasses.dataclass(frozen=True)
class Watchdog:
    """The stall rule: a run whose latest progress (time.monotonic of the run's start or its latest report)
    is more than `timeout_s` ago is stalled (`timeout_s` 0: never). Its executor kills its worker, and the run
    is retried like one whose worker died."""

    timeout_s: float  # study.train.stall_timeout_s

    def until_stall(self, latest_progress: list[float]) -> float | None:
        """Seconds until the first of these runs stalls (None: none can)."""
        if not self.timeout_s or not latest_progress:
            return None
        return max(0.0, min(latest_progress) + self.timeout_s - time.monotonic())

    def stalled_for(self, latest_progress: float) -> float | None:
        """How long the run has been silent, if that is past the timeout; None while it is not stalled."""
        silent = time.monotonic() - latest_progress
        return silent if self.timeout_s and silent > self.timeout_s else None

    @staticmethod
    def say_killed(key: str, place: str, silent: float, attempt: int) -> None:
        then = "retried from its checkpoint" if attempt < ATTEMPTS else "failed"
        print(f"optsweep: run {key[:8]} on {place} made no progress for {silent:.0f} s "
              f"(study.train.stall_timeout_s): killed, {then}", file=sys.stderr, flush=True)

    def reason(self, killed: str) -> str:
        """The error text of a killed attempt; `killed` names what was killed."""
        return (f"no progress for {self.timeout_s:g} s (study.train.stall_timeout_s): the watchdog killed "
                f"{killed} while training this run")


def say_retired(place: str, reason: str) -> None:
    print(f"optsweep: {place} retired: {reason}; starting a replacement", file=sys.stderr, flush=True)


def say_dropped(place: str, reason: str, left: int, planned: int) -> None:
    """One line for a worker slot that is gone for good; with none left the sweep cannot go on."""
    if left == 0:
        raise ParamsError(f"no worker left: the last, {place}, was dropped ({reason})")
    print(f"optsweep: {place} dropped: {reason}; the pool goes on with {left} of {planned} workers",
          file=sys.stderr, flush=True)
