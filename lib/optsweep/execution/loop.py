"""The dispatch/wait/collect loop, written once for both executors (the local pool and the Ray actors).

A pool is a list of slots, each holding one warm worker. A backend says how its workers start, take a task,
answer, report progress and stop (the abstract methods of `SlotPool`); the loop applies the rules of
optsweep.execution.rules to any of them the same way:
- each idle slot takes the next waiting task (`WaitingTasks`); a retry goes to a slot other than the one its
  run failed on;
- a failed attempt with tries left is retried (`settle`); a worker that died is replaced and its run retried;
  a worker the retire rule condemns (`FailureStreak`) is replaced too; a replacement runs the preflight
  again, and a slot whose replacement cannot start is dropped with one line (`say_dropped`): the pool goes
  on smaller and stops only when no slot is left;
- the watchdog kills the worker of a run without progress for `study.train.stall_timeout_s`; the run is then
  retried like one whose worker died (from its checkpoint), and a second stall fails it;
- Ctrl-C stops the sweep only while the loop waits for its workers; elsewhere (storing a finished run, say)
  it takes effect at the next wait, and a second Ctrl-C stops at once. Runs that had finished as it came in
  are handed over (to be stored) before the workers stop.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import signal
import threading
import time
from typing import Any, Generic, Iterator, Self, TypeVar

from ..params.study import TrainSettings
from .rules import FailureStreak, Watchdog, say_dropped, say_retired, settle
from .tasks import INBOX_POLL_S, Attempt, Outcome, Task, TaskInbox, WaitingTasks


@dataclasses.dataclass
class Slot(abc.ABC):
    """A place in the pool and the run its worker trains. Replacements keep the slot, so that a retry can
    avoid the slot its run failed on."""

    number: int
    streak: FailureStreak  # the retire rule's count for the slot's current worker
    task: Task | None = None
    attempt: int = 0  # which try at `task` this is
    started: float = 0.0  # time.perf_counter when the task was handed over: how long a dead worker's try took
    stalled: bool = False  # its worker was killed by the watchdog

    def take(self, chosen: tuple[Task, int]) -> None:
        """Start on (task, attempt number) from `WaitingTasks.pop`."""
        (self.task, self.attempt), self.stalled = chosen, False
        self.started = time.perf_counter()

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Which worker this is and where it runs, as the pool's lines name it."""

    @property
    def who(self) -> str:
        """How the error of a run whose worker the watchdog killed names that worker."""
        return self.name


S = TypeVar("S", bound=Slot)


class SlotPool(abc.ABC, Generic[S]):
    """Trains tasks on a pool of slots. Use as a context manager so that workers never outlive it."""

    inline = False  # the main process never trains: the workers do

    def __init__(self, train: TrainSettings):
        self.retire_after = train.retire_after_fast_failures
        self.watchdog = Watchdog(train.stall_timeout_s)
        self._slots: list[S] = []
        self._planned = 0  # how many slots the pool started with: dropped slots leave it smaller
        self._previous_handler: Any = None
        self._interruptible = False  # True while waiting for workers (or inside an inline trainer)
        self._interrupt_pending = False

    # --- what a backend provides ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _start_slots(self) -> None:
        """Fill `_slots` with started workers (concurrently), then wait until each has imported the trainer
        and passed the preflight; a failure there is the setup's fault, and stops the sweep."""

    @abc.abstractmethod
    def close(self, graceful: bool = True) -> None:
        """Stop every worker (`graceful`: let them exit on their own first)."""

    @abc.abstractmethod
    def _send(self, slot: S) -> None:
        """Hand the slot's task to its worker; the run's start counts as its first progress."""

    @abc.abstractmethod
    def _wait(self, busy: list[S], timeout: float | None) -> list[S]:
        """The busy slots whose worker has answered or died, waiting up to `timeout` s (None: for ever) for one."""

    @abc.abstractmethod
    def _read(self, slot: S) -> Attempt | str:
        """The answer of a slot `_wait` returned: its worker's attempt, or why the worker died."""

    @abc.abstractmethod
    def _answered(self, slot: S) -> bool:
        """Whether the slot's worker has an attempt waiting to be read."""

    @abc.abstractmethod
    def _heartbeat(self, slot: S) -> float:
        """The time.monotonic of the slot's run's start or latest progress report, as the driver knows it."""

    @abc.abstractmethod
    def _kill(self, slot: S) -> None:
        """Kill the slot's worker at once (the watchdog's way): its death then shows in `_wait`."""

    @abc.abstractmethod
    def _stop(self, slot: S) -> None:
        """End a retired or dead worker; one that is alive but unreachable must not train on unseen."""

    @abc.abstractmethod
    def _restart(self, slot: S) -> str | None:
        """Start a fresh worker in the slot and wait for its preflight; None once it is ready, else why the slot
        must be given up (the failed worker stopped)."""

    @abc.abstractmethod
    def _answers_at_interrupt(self, busy: list[S]) -> Iterator[tuple[S, Attempt]]:
        """The attempts of busy slots that are back, or come back within a moment."""

    def _alive(self, slot: S) -> bool:
        """Whether an idle slot's worker is still there; by default a death shows only when its next run fails."""
        return True

    def _hear_from(self, watched: list[S]) -> None:
        """Bring the heartbeats up to date before the watchdog judges them; by default they always are."""

    def _report_progress(self, busy: list[S]) -> float | None:
        """Print progress lines for the runs in flight if they are due; seconds until the next are due (None:
        this backend prints none)."""
        return None

    # --- the loop ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and run the device preflight, once.

        `run` calls it; call it earlier to fail before anything else happens (claiming runs, say)."""
        if not self._slots:
            self._start_slots()
            self._planned = len(self._slots)

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        """Train every task; yields each outcome as soon as it is final (after any retries).

        Workers start with the first task, so a sweep whose runs are all stored never imports torch."""
        if tasks:
            yield from self._loop(tasks, None)

    def serve(self, inbox: TaskInbox) -> Iterator[Outcome]:
        """Train whatever is submitted to `inbox` (from other threads) until it is finished; yields outcomes as
        they become final. This keeps every worker busy while several searches each wait on their own runs."""
        yield from self._loop([], inbox)

    def _loop(self, tasks: list[Task], inbox: TaskInbox | None) -> Iterator[Outcome]:
        """Train `tasks`, and with an inbox every task submitted to it until it is closed and drained."""
        self.start()
        waiting = WaitingTasks(len(self._slots), tasks)  # one wave of runs: see WaitingTasks
        while True:
            if inbox is not None:
                waiting.take_from(inbox)
            if not waiting and not self._busy() and (inbox is None or inbox.finished()):
                return
            self._dispatch(waiting)
            busy = self._busy()
            watched = [slot for slot in busy if not slot.stalled]  # killed ones: their death is collected next
            timeout = self._timeout(watched, self._report_progress(busy), serving=inbox is not None)
            try:
                with self._interruptible_section():
                    if busy:
                        done = self._wait(busy, timeout)
                    else:  # nothing trains: a serving pool waits for its searches to submit more
                        done = []
                        inbox.wait(timeout)
            except KeyboardInterrupt:
                yield from self._finished_before_interrupt(busy)
                raise
            if self._until_stall(watched) == 0:
                self._kill_stalled(watched)
            for slot in done:
                outcome = self._collect(slot, waiting)
                if outcome is not None:
                    yield outcome

    def _busy(self) -> list[S]:
        return [slot for slot in self._slots if slot.task is not None]

    def _timeout(self, watched: list[S], report_in: float | None, serving: bool) -> float | None:
        """How long to wait for a worker: until a watched run may stall, the next progress lines are due, or
        (serving) the inbox is looked at again; None: until a worker answers."""
        deadlines = [self._until_stall(watched), report_in, INBOX_POLL_S if serving else None]
        return min((deadline for deadline in deadlines if deadline is not None), default=None)

    def _until_stall(self, watched: list[S]) -> float | None:
        return self.watchdog.until_stall([self._heartbeat(slot) for slot in watched])

    def _dispatch(self, waiting: WaitingTasks) -> None:
        """Hand each idle slot its next task (a worker that died while idle is replaced first)."""
        for slot in [slot for slot in self._slots if slot.task is None and not self._alive(slot)]:
            self._replace(slot)
        for slot in self._slots:
            if slot.task is None and (chosen := waiting.pop(slot.number if len(self._slots) > 1 else None)):
                slot.take(chosen)
                self._send(slot)

    def _collect(self, slot: S, waiting: WaitingTasks) -> Outcome | None:
        """The slot's outcome if its task is final; a failed attempt with tries left waits to be retried. A
        worker that died is replaced, and one the retire rule condemns too."""
        task, number = slot.task, slot.attempt
        answer = self._read(slot)
        slot.task = None
        if isinstance(answer, Attempt):
            attempt = answer
            retire = slot.streak.retire_reason(attempt)
            if retire is not None:
                say_retired(slot.name, retire)
                self._replace(slot)
        else:
            died = self.watchdog.reason(slot.who) if slot.stalled else answer
            attempt = Attempt(None, died, time.perf_counter() - slot.started)
            self._replace(slot)
        return settle(task, number, attempt, waiting, slot.number)

    def _replace(self, slot: S) -> None:
        """A fresh worker in the slot, preflighted again; a slot whose replacement cannot start is dropped, and
        the pool goes on without it."""
        last = slot.name  # the dropped line names where the slot's last worker ran, not a start that failed
        self._stop(slot)
        slot.streak = FailureStreak(self.retire_after)
        gone = self._restart(slot)
        if gone is not None:
            self._slots.remove(slot)
            say_dropped(last, gone, len(self._slots), self._planned)

    def _kill_stalled(self, watched: list[S]) -> None:
        """The watchdog: kill the worker of a run without progress for `stall_timeout_s` (and no answer
        waiting); its death shows in the next wait, and `_collect` retries the run from its checkpoint."""
        self._hear_from(watched)  # a run may have progressed since the driver last looked
        for slot in watched:
            silent = self.watchdog.stalled_for(self._heartbeat(slot))
            if silent is not None and not self._answered(slot):
                self.watchdog.say_killed(slot.task.key, slot.name, silent, slot.attempt)
                slot.stalled = True
                self._kill(slot)

    def _finished_before_interrupt(self, busy: list[S]) -> Iterator[Outcome]:
        """Runs that finished as Ctrl-C came in: hand them over (to be stored) before the workers stop."""
        for slot, attempt in self._answers_at_interrupt(busy):
            if attempt.error is None:
                yield Outcome(slot.task.key, slot.task.spec, attempt.result, None, slot.attempt, attempt.wall_s)

    # --- Ctrl-C --------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.close(graceful=exc_type is None)
        finally:
            if self._previous_handler is not None:
                signal.signal(signal.SIGINT, self._previous_handler)

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        """Ctrl-C stops the sweep only where nothing is half done: while waiting for workers or training
        inline. Elsewhere (storing a finished run, say) it takes effect at the next such point; a second
        Ctrl-C stops at once."""
        if self._interruptible or self._interrupt_pending:
            raise KeyboardInterrupt
        self._interrupt_pending = True

    @contextlib.contextmanager
    def _interruptible_section(self) -> Iterator[None]:
        if self._interrupt_pending:
            raise KeyboardInterrupt
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
