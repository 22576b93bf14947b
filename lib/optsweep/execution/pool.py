"""Dispatch runs to a pool of persistent worker processes (or run them inline with one worker).

Each worker is started once per sweep with the "spawn" method, imports the trainer once (torch and
transformers cost seconds to import) and then trains one run spec at a time for as long as the sweep
lasts. Devices:
- `study.workers` is a count, or `auto` (the default): one worker per visible GPU x `study.workers_per_gpu`,
  or without a GPU one per CPU core / `study.train.threads_per_worker`. A written count means the same on
  any box.
- CPU: each worker is limited to `study.train.threads_per_worker` torch threads.
- CUDA: worker i is pinned to GPU `gpus[i % len(gpus)]` with CUDA_VISIBLE_DEVICES, so the first workers
  spread over all GPUs before any GPU gets a second one.
- One worker in total: runs are trained inline in the main process, which is easiest to debug.

Before its first run each worker (and the inline trainer) runs the preflight (optsweep.execution.preflight): a worker
that cannot compute on its device, or cannot read the prepared data (`data_dir`, an absolute path), stops the
sweep with one line, and nothing is stored.

A run whose trainer raises is retried once, on another worker; a worker that dies (killed, out of memory)
is replaced and its run retried the same way, resuming from the run's checkpoint if it left one. After the
second failed attempt the run comes back with its error text (a *failed* run, trained again by the next
sweep). A worker is retired (see `FailureStreak`) when a run fails with a device error, when its device
fails the check a failed run is followed by, or after `study.train.retire_after_fast_failures` fast failures
in a row: a broken GPU fails every run in milliseconds, and must not be fed the whole sweep. Its
replacement runs the preflight again; a slot whose replacement cannot start is dropped, and the pool goes
on smaller. The sweep stops only when no worker is left.
The watchdog: a run that reports no progress (optsweep.live) for `study.train.stall_timeout_s` has its
worker killed, and is retried like a run whose worker died, from its checkpoint; a second stall fails it.
A hung run never holds its GPU for ever. A trainer that never reports is killed after that long too (0
turns it off). Both executors (this pool and the Ray actors) apply the same rules, written once:
`FailureStreak`, `Watchdog`, `settle` and `say_dropped`.
Ctrl-C in the main process terminates the workers (they ignore SIGINT themselves, so that one key press
does not leave half of them training) and propagates as KeyboardInterrupt, after handing over the runs
that had already finished, so that they reach the run store. It never lands in the middle of storing a run.
Workers never outlive the main process: each watches its parent and exits when it is gone (an SSH drop's
SIGHUP, a SIGKILL), so a dead sweep never holds a device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from typing import Any, Iterator

from ..params.settings import ParamsError
from ..params.study import TrainSettings
from ..runs.trainer import Trainer, load_trainer
from .preflight import PreflightError, preflight
from .rules import ATTEMPTS, FailureStreak, Watchdog, say_dropped, say_retired, settle
from .tasks import INBOX_POLL_S, Attempt, Outcome, Task, TaskInbox, WaitingTasks
from .workers import limit_torch_threads, train_once, worker_main

# --- the pool --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Worker:
    slot: int  # its place in the pool, kept by its replacements: a retry avoids the slot it failed on
    process: multiprocessing.process.BaseProcess
    connection: multiprocessing.connection.Connection
    env: dict[str, str]
    streak: FailureStreak
    heartbeat: Any  # a shared double: when its run started or last reported progress (time.monotonic, which
    # Linux keeps for the whole machine, so the main process can compare it with its own clock)
    task: Task | None = None
    attempts: int = 0
    started: float = 0.0
    stalled: bool = False  # killed by the watchdog

    @property
    def place(self) -> str:
        device = f"GPU {self.env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in self.env else "cpu"
        return f"worker {self.slot} ({device}, pid {self.process.pid})"


class Executor:
    """Trains tasks on persistent workers. Use as a context manager so that workers never outlive it."""

    def __init__(self, trainer_name: str, environments: list[dict[str, str]], train: TrainSettings | None = None,
                 data_dir: str | None = None):
        """`data_dir`: the prepared data folder the runs read, which the preflight opens (None: none)."""
        train = train or TrainSettings(device="cpu")
        self.trainer_name = trainer_name
        self.data_dir = data_dir
        self.environments = [{**env, "OPTSWEEP_DRIVER_PID": str(os.getpid())} for env in environments]
        self.train_settings = train.model_dump()
        self.threads = train.threads_per_worker
        self.retire_after = train.retire_after_fast_failures
        self.watchdog = Watchdog(train.stall_timeout_s)
        self.inline = len(environments) <= 1
        self._workers: list[_Worker] = []
        self._inline_trainer: Trainer | None = None
        self._context = multiprocessing.get_context("spawn")
        self._previous_handler: Any = None
        self._interruptible = False  # True while waiting for workers or inside an inline trainer
        self._interrupt_pending = False

    def __enter__(self) -> Executor:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
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

    def _stop_if_interrupted(self) -> None:
        if self._interrupt_pending:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def _interruptible_section(self) -> Iterator[None]:
        self._stop_if_interrupted()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        """Train every task; yields each outcome as soon as it is final (after any retries).

        Workers start with the first task, so a sweep whose runs are all stored never imports torch."""
        if not tasks:
            return
        yield from (self._run_inline(tasks) if self.inline else self._run_pool(tasks))

    def start(self) -> None:
        """Start the workers (or load the trainer inline) and run the device preflight, once.

        `run` calls it; call it earlier to fail before anything else happens (claiming runs, say)."""
        if self.inline and self._inline_trainer is None:
            self._inline_trainer = load_trainer(self.trainer_name)
            limit_torch_threads(self.threads)
            try:
                preflight(self.train_settings, self.data_dir)
            except PreflightError as error:
                raise ParamsError(f"preflight: {error}") from None
        elif not self.inline and not self._workers:
            self._workers = [self._start_worker(slot) for slot in range(len(self.environments))]  # concurrently
            for worker in self._workers:
                self._await_ready(worker)

    def close(self, graceful: bool = True) -> None:
        for worker in self._workers:
            if graceful and worker.process.is_alive():
                try:
                    worker.connection.send(None)
                except OSError:
                    pass
            else:
                worker.process.terminate()
        for worker in self._workers:
            worker.process.join(timeout=10 if graceful else 5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self._workers = []

    # inline: the main process is the only worker

    def _run_inline(self, tasks: list[Task]) -> Iterator[Outcome]:
        self.start()
        for task in tasks:
            for number in range(1, ATTEMPTS + 1):
                with self._interruptible_section():
                    attempt = train_once(self._inline_trainer, task.spec, self.train_settings)
                if attempt.error is None:
                    break
            yield Outcome(task.key, task.spec, attempt.result, attempt.error, number, attempt.wall_s)

    # pool: persistent spawned workers, one task each at a time

    def _start_worker(self, slot: int) -> _Worker:
        ours, theirs = self._context.Pipe()
        env = self.environments[slot]
        heartbeat = self._context.RawValue("d", 0.0)
        args = (self.trainer_name, env, self.train_settings, self.data_dir, theirs, heartbeat)
        process = self._context.Process(target=worker_main, name="optsweep-worker", args=args)
        process.start()
        theirs.close()  # so that a dead worker shows up as EOF on our end
        return _Worker(slot, process, ours, env, FailureStreak(self.retire_after), heartbeat)

    @staticmethod
    def _await_ready(worker: _Worker) -> None:
        """Wait until the worker has imported the trainer and passed the preflight. At the start of a sweep a
        worker that cannot is the setup's fault, not the runs': the caller stops the sweep."""
        try:
            status, detail = worker.connection.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=5)
            code = worker.process.exitcode
            raise RuntimeError(f"a worker process exited (code {code}) before it was ready") from None
        if status == "error":
            raise ParamsError(f"{detail} (in a worker process, before any run)")

    @staticmethod
    def _stop(worker: _Worker) -> None:
        """End a retired or dead worker: asked to exit, killed if it does not."""
        with contextlib.suppress(OSError):
            worker.connection.send(None)
        worker.process.join(timeout=5)
        if worker.process.is_alive():  # alive but unreachable: it must not train on unseen
            worker.process.kill()
            worker.process.join()
        worker.connection.close()

    def _replace(self, worker: _Worker) -> None:
        """A fresh process in the worker's slot, preflighted again; a slot whose replacement cannot start is
        dropped, and the pool goes on without it."""
        self._stop(worker)
        fresh = self._start_worker(worker.slot)
        index = self._workers.index(worker)
        try:
            self._await_ready(fresh)
        except (ParamsError, RuntimeError) as error:
            self._stop(fresh)
            del self._workers[index]
            say_dropped(worker.place, f"its replacement cannot start: {error}", len(self._workers),
                        len(self.environments))
            return
        self._workers[index] = fresh

    def _run_pool(self, tasks: list[Task], inbox: TaskInbox | None = None) -> Iterator[Outcome]:
        """Train `tasks`, and with an inbox every task submitted to it until it is closed and drained."""
        self.start()
        waiting = WaitingTasks(len(self._workers), tasks)  # one wave of runs: see WaitingTasks
        while True:
            if inbox is not None:
                waiting.take_from(inbox)
            if not waiting and not any(worker.task for worker in self._workers):
                if inbox is None or inbox.finished():
                    return
            self._dispatch(waiting)
            busy = [worker for worker in self._workers if worker.task is not None]
            try:
                with self._interruptible_section():
                    waited = [w.connection for w in busy] + [w.process.sentinel for w in busy]
                    stall = self.watchdog.until_stall([worker.heartbeat.value for worker in busy])  # None: never
                    if inbox is None:
                        multiprocessing.connection.wait(waited, timeout=stall)
                    elif waited:
                        poll = INBOX_POLL_S if stall is None else min(INBOX_POLL_S, stall)
                        multiprocessing.connection.wait(waited, timeout=poll)
                    else:
                        inbox.wait(INBOX_POLL_S)
            except KeyboardInterrupt:
                yield from self._finished_before_interrupt(busy)
                raise
            self._kill_stalled(busy)
            for worker in busy:
                outcome = self._collect(worker, waiting)
                if outcome is not None:
                    yield outcome

    def serve(self, inbox: TaskInbox) -> Iterator[Outcome]:
        """Train whatever is submitted to `inbox` (from other threads) until it is finished; yields outcomes as
        they become final. This keeps every worker busy while several searches each wait on their own runs."""
        if self.inline:
            raise ValueError("serve needs a pool of workers (study.workers > 1)")
        yield from self._run_pool([], inbox)

    @staticmethod
    def _finished_before_interrupt(busy: list[_Worker]) -> Iterator[Outcome]:
        """Runs that finished as Ctrl-C came in: hand them over (to be stored) before the workers stop."""
        for worker in busy:
            try:
                if not worker.connection.poll(0.2):
                    continue
                key, attempt = worker.connection.recv()
            except (EOFError, OSError):
                continue
            if attempt.error is None:
                yield Outcome(key, worker.task.spec, attempt.result, None, worker.attempts, attempt.wall_s)

    def _kill_stalled(self, busy: list[_Worker]) -> None:
        """The watchdog: kill the worker of a run without progress for `stall_timeout_s` (and no result
        waiting); `_collect` then sees a dead worker, replaces it and retries the run from its checkpoint."""
        for worker in busy:
            silent = self.watchdog.stalled_for(worker.heartbeat.value)
            if silent is not None and not worker.connection.poll():
                self.watchdog.say_killed(worker.task.key, worker.place, silent, worker.attempts)
                worker.stalled = True
                worker.process.kill()
                worker.process.join()

    def _dispatch(self, waiting: WaitingTasks) -> None:
        """Hand each idle worker its next task (a worker that died while idle is replaced first)."""
        for worker in [worker for worker in self._workers if worker.task is None and not worker.process.is_alive()]:
            self._replace(worker)
        for worker in self._workers:
            if worker.task is None and (chosen := waiting.pop(worker.slot if len(self._workers) > 1 else None)):
                worker.task, worker.attempts = chosen
                worker.started = time.perf_counter()
                worker.heartbeat.value = time.monotonic()  # the run's start counts as progress
                worker.connection.send(worker.task)

    def _collect(self, worker: _Worker, waiting: WaitingTasks) -> Outcome | None:
        """The worker's outcome if its task is final; a failed attempt with tries left waits to be retried.
        A worker that died is replaced, and one the retire rule condemns too."""
        task, number = worker.task, worker.attempts
        try:
            if not worker.connection.poll():
                if worker.process.is_alive():
                    return None  # still training
                raise EOFError
            _, attempt = worker.connection.recv()
            worker.task = None
            retire = worker.streak.retire_reason(attempt)
            if retire is not None:
                say_retired(worker.place, retire)
                self._replace(worker)
        except (EOFError, OSError):
            wall = time.perf_counter() - worker.started
            worker.task = None
            self._replace(worker)
            code = worker.process.exitcode
            died = (self.watchdog.reason("its worker") if worker.stalled
                    else f"worker process died (exit code {code}) while training this run")
            attempt = Attempt(None, died, wall)
        return settle(task, number, attempt, waiting, worker.slot)
