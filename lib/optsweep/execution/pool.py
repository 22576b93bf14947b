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
turns it off). Both executors (this pool and the Ray actors) run the same loop (optsweep.execution.loop),
which applies the same rules (optsweep.execution.rules); this module says how a worker process starts, takes
a task, answers and stops.
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
import time
from typing import Any, Iterator

from ..params.settings import ParamsError
from ..params.study import TrainSettings
from ..runs.trainer import Trainer, load_trainer
from .loop import Slot, SlotPool
from .preflight import PreflightError, preflight
from .rules import ATTEMPTS, FailureStreak
from .tasks import Attempt, Outcome, Task, TaskInbox
from .workers import limit_torch_threads, train_once, worker_main


@dataclasses.dataclass(kw_only=True)
class _Worker(Slot):
    """A slot's worker process and its end of the pipe."""

    env: dict[str, str]
    process: multiprocessing.process.BaseProcess
    connection: multiprocessing.connection.Connection
    heartbeat: Any  # a shared double: when its run started or last reported progress (time.monotonic, which
    # Linux keeps for the whole machine, so the main process can compare it with its own clock)

    @property
    def name(self) -> str:
        device = f"GPU {self.env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in self.env else "cpu"
        return f"worker {self.number} ({device}, pid {self.process.pid})"

    @property
    def who(self) -> str:
        return "its worker"


class Executor(SlotPool[_Worker]):
    """Trains tasks on persistent workers. Use as a context manager so that workers never outlive it."""

    def __init__(self, trainer_name: str, environments: list[dict[str, str]], train: TrainSettings | None = None,
                 data_dir: str | None = None):
        """`data_dir`: the prepared data folder the runs read, which the preflight opens (None: none)."""
        train = train or TrainSettings(device="cpu")
        super().__init__(train)
        self.trainer_name = trainer_name
        self.data_dir = data_dir
        self.environments = [{**env, "OPTSWEEP_DRIVER_PID": str(os.getpid())} for env in environments]
        self.train_settings = train.model_dump()
        self.threads = train.threads_per_worker
        self.inline = len(environments) <= 1
        self._inline_trainer: Trainer | None = None
        self._context = multiprocessing.get_context("spawn")

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        """Train every task; yields each outcome as soon as it is final (after any retries).

        Workers (or the inline trainer) start with the first task, so a sweep whose runs are all stored never
        imports torch."""
        if not self.inline:
            yield from super().run(tasks)
        elif tasks:
            yield from self._run_inline(tasks)

    def serve(self, inbox: TaskInbox) -> Iterator[Outcome]:
        """See `SlotPool.serve`; a pool of one worker trains inline, with nothing to share."""
        if self.inline:
            raise ValueError("serve needs a pool of workers (study.workers > 1)")
        yield from super().serve(inbox)

    def start(self) -> None:
        """Start the workers (or load the trainer inline) and run the device preflight, once.

        `run` calls it; call it earlier to fail before anything else happens (claiming runs, say)."""
        if not self.inline:
            super().start()
        elif self._inline_trainer is None:
            self._inline_trainer = load_trainer(self.trainer_name)
            limit_torch_threads(self.threads)
            try:
                preflight(self.train_settings, self.data_dir)
            except PreflightError as error:
                raise ParamsError(f"preflight: {error}") from None

    def close(self, graceful: bool = True) -> None:
        for worker in self._slots:
            if graceful and worker.process.is_alive():
                try:
                    worker.connection.send(None)
                except OSError:
                    pass
            else:
                worker.process.terminate()
        for worker in self._slots:
            worker.process.join(timeout=10 if graceful else 5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self._slots = []

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

    # pool: persistent spawned workers, one task each at a time (the loop is SlotPool's)

    def _spawn(self, env: dict[str, str]) -> tuple[multiprocessing.process.BaseProcess,
                                                   multiprocessing.connection.Connection, Any]:
        """A worker process started with `env`, our end of its pipe, and its heartbeat."""
        ours, theirs = self._context.Pipe()
        heartbeat = self._context.RawValue("d", 0.0)
        args = (self.trainer_name, env, self.train_settings, self.data_dir, theirs, heartbeat)
        process = self._context.Process(target=worker_main, name="optsweep-worker", args=args)
        process.start()
        theirs.close()  # so that a dead worker shows up as EOF on our end
        return process, ours, heartbeat

    def _start_slots(self) -> None:
        for number, env in enumerate(self.environments):  # they start concurrently
            process, connection, heartbeat = self._spawn(env)
            self._slots.append(_Worker(number, FailureStreak(self.retire_after), env=env, process=process,
                                       connection=connection, heartbeat=heartbeat))
        for worker in self._slots:
            self._await_ready(worker)

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

    def _restart(self, worker: _Worker) -> str | None:
        worker.process, worker.connection, worker.heartbeat = self._spawn(worker.env)
        try:
            self._await_ready(worker)
        except (ParamsError, RuntimeError) as error:
            self._stop(worker)
            return f"its replacement cannot start: {error}"
        return None

    def _alive(self, worker: _Worker) -> bool:
        return worker.process.is_alive()

    def _send(self, worker: _Worker) -> None:
        worker.heartbeat.value = time.monotonic()
        worker.connection.send(worker.task)

    def _wait(self, busy: list[_Worker], timeout: float | None) -> list[_Worker]:
        multiprocessing.connection.wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout)
        return [worker for worker in busy if worker.connection.poll() or not worker.process.is_alive()]

    def _read(self, worker: _Worker) -> Attempt | str:
        try:
            _, attempt = worker.connection.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=5)  # its exit code, once it is gone
            return f"worker process died (exit code {worker.process.exitcode}) while training this run"
        return attempt

    def _answered(self, worker: _Worker) -> bool:
        return worker.connection.poll()

    def _heartbeat(self, worker: _Worker) -> float:
        return worker.heartbeat.value

    def _kill(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join()

    def _stop(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.connection.send(None)
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.connection.close()

    def _answers_at_interrupt(self, busy: list[_Worker]) -> Iterator[tuple[_Worker, Attempt]]:
        for worker in busy:
            try:
                if not worker.connection.poll(0.2):
                    continue
                _, attempt = worker.connection.recv()
            except (EOFError, OSError):
                continue
            yield worker, attempt
