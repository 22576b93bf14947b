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

import collections
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Iterator

from ..live import RunProgress, reporting_to
from ..params.settings import ParamsError
from ..params.study import StudySettings, TrainSettings
from ..runs.trainer import DEFAULT_TRAINER, Trainer, load_trainer
from .preflight import PreflightError, check_device, preflight

ATTEMPTS = 2  # a crashed run is retried once, then reported as failed
FAST_FAILURE_S = 60.0  # a run that fails sooner never really trained: a streak of them is the worker's fault
# What a broken device raises (torch's AcceleratorError and CUDA/cuDNN/cuBLAS/NCCL status texts, ECC and Xid
# reports): the worker's CUDA context is lost, so whatever it trains next fails the same way.
DEVICE_ERROR = re.compile(r"AcceleratorError|CUDA error|cuDNN error|CUBLAS_STATUS|CUDNN_STATUS|NCCL error"
                          r"|illegal memory access|uncorrectable ECC|\bXid\b")
PARENT_POLL_S = 1.0  # how often a worker checks that the main process is still alive
INBOX_POLL_S = 0.05  # how often a serving pool looks for newly submitted tasks while its workers train
# Fewer out-of-memory errors from fragmentation when a run halves its micro-batch (set before torch starts).
CUDA_ALLOCATOR = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


@dataclasses.dataclass(frozen=True)
class Task:
    key: str
    spec: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One try at one run, as its worker reports it."""

    result: dict[str, Any] | None
    error: str | None  # the traceback when the trainer raised
    wall_s: float
    device_check: str | None = None  # after a failed try: why the device check failed, None if it passed


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A task's end: the trainer's result, or None and the error of its last attempt."""

    key: str
    spec: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    wall_s: float


# --- which workers, on which devices ------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists.

    Asking nvidia-smi rather than torch keeps the main process free of a seconds-long torch import.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [gpu.strip() for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def thread_limits(threads: int) -> dict[str, str]:
    """The environment that limits a worker's math libraries to `threads` threads (read when torch starts)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def data_dir_read_by(study: StudySettings) -> str | None:
    """The absolute path of the prepared data the study's runs read (None: its trainer reads none). Absolute,
    so that a worker started elsewhere (a Ray node) opens the same folder as the driver."""
    return os.path.abspath(study.data.dir) if study.trainer == DEFAULT_TRAINER else None


def worker_environments(study: StudySettings, gpus: list[str] | None = None) -> list[dict[str, str]]:
    """The environment each worker starts with; one entry per worker (see the module docstring)."""
    device = study.train.device
    gpus = [] if device == "cpu" else (visible_gpus() if gpus is None else gpus)
    if device == "cuda" and not gpus:
        raise ParamsError("study.train.device: 'cuda' but no GPU is visible (CUDA_VISIBLE_DEVICES / nvidia-smi)")
    cpu_env = thread_limits(study.train.threads_per_worker)
    count = study.workers if study.workers != "auto" else _auto_workers(study, gpus)
    if not gpus:
        return [dict(cpu_env) for _ in range(count)]
    return [{**cpu_env, **CUDA_ALLOCATOR, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(count)]


def _auto_workers(study: StudySettings, gpus: list[str]) -> int:
    """`workers: auto`: one per GPU x workers_per_gpu, or as many CPU workers as the cores allow."""
    if gpus:
        return len(gpus) * study.workers_per_gpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // study.train.threads_per_worker)


# --- one attempt at one run ------------------------------------------------------------------------------


def _attempt(trainer: Trainer, spec: dict[str, Any], train_settings: dict[str, Any]) -> Attempt:
    """Train once. When the trainer raises, check the device again: a failure there is the device's fault."""
    start = time.perf_counter()
    try:
        result = trainer(spec)
        if not isinstance(result, dict):
            raise TypeError(f"trainer returned {type(result).__name__}, expected a dict with 'loss'")
        return Attempt(result, None, time.perf_counter() - start)
    except Exception:
        error, wall = traceback.format_exc(limit=-8).strip(), time.perf_counter() - start
    try:
        check_device(train_settings)
    except PreflightError as failed:
        return Attempt(None, error, wall, device_check=str(failed))
    return Attempt(None, error, wall)


def _limit_torch_threads(threads: int) -> None:
    """OMP_NUM_THREADS covers a torch imported later; this covers one the trainer module already imported."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _exit_with_parent(parent: int) -> None:
    """Exit at once when the main process is gone (the worker is then re-parented): no orphan holds a GPU."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="optsweep-parent-watch", daemon=True).start()


def _worker_main(trainer_name: str, env: dict[str, str], train_settings: dict[str, Any], data_dir: str | None,
                 connection: multiprocessing.connection.Connection, heartbeat: Any) -> None:
    """Train the tasks the connection brings; `heartbeat` (shared with the main process) holds the time of the
    run's latest progress report, which the watchdog reads."""
    def beat(progress: RunProgress) -> None:
        heartbeat.value = time.monotonic()

    _exit_with_parent(int(env["OPTSWEEP_DRIVER_PID"]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    os.environ.update(env)  # before the trainer imports torch, so device pinning and threads take effect
    try:
        trainer = load_trainer(trainer_name)
        _limit_torch_threads(int(env["OMP_NUM_THREADS"]))
        device = preflight(train_settings, data_dir)
    except (ParamsError, PreflightError) as error:
        connection.send(("error", str(error)))
        return
    connection.send(("ready", device))
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):  # the main process is gone
            return
        if task is None:
            return
        with reporting_to(beat):
            attempt = _attempt(trainer, task.spec, train_settings)
        connection.send((task.key, attempt))


# --- tasks submitted while the pool runs -------------------------------------------------------------------


class TaskInbox:
    """Tasks handed to a serving pool by other threads, one batch per submission (a search's line); `finished`
    once closed and empty."""

    def __init__(self) -> None:
        self._batches: list[list[Task]] = []
        self._speculative: list[Task] = []
        self._closed = False
        self._changed = threading.Condition()

    def submit(self, tasks: list[Task], speculative: bool = False) -> None:
        with self._changed:
            if speculative:
                self._speculative.extend(tasks)
            elif tasks:
                self._batches.append(list(tasks))
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def take(self) -> tuple[list[list[Task]], list[Task]]:
        """(batches of tasks waited for, speculative tasks) submitted since the last call."""
        with self._changed:
            taken = (self._batches, self._speculative)
            self._batches, self._speculative = [], []
            return taken

    def wait(self, timeout: float) -> None:
        with self._changed:
            if not self._batches and not self._speculative and not self._closed:
                self._changed.wait(timeout)

    def finished(self) -> bool:
        with self._changed:
            return self._closed and not self._batches and not self._speculative


@dataclasses.dataclass
class _Batch:
    tasks: collections.deque[Task]
    passed_over: int = 0  # tasks of younger batches started while this one waited


class WaitingTasks:
    """The tasks a pool has yet to start, in the order they start:
    1. retries (their runs had started), each on a worker other than the one it failed on;
    2. a task of the batch with the fewest tasks still waiting, the oldest among equals: a search moves on only
       once its whole line is back, so finishing lines first keeps the most searches submitting work; but a
       batch passed over by `patience` tasks of younger batches goes first, so that no search starves behind
       the others' short lines (and is left to run its chain of lines alone at the end);
    3. speculative tasks, on workers that nothing else needs."""

    def __init__(self, patience: int, tasks: list[Task] | None = None) -> None:
        self.patience = patience
        self._retries: list[tuple[Task, int, int | None]] = []  # (task, attempt, the worker it failed on)
        self._batches: list[_Batch] = []
        self._speculative: collections.deque[Task] = collections.deque()
        self.add(tasks or [])

    def add(self, batch: list[Task], speculative: bool = False) -> None:
        if speculative:
            self._speculative.extend(batch)
        elif batch:
            self._batches.append(_Batch(collections.deque(batch)))

    def take_from(self, inbox: TaskInbox) -> None:
        batches, speculative = inbox.take()
        for batch in batches:
            self.add(batch)
        self.add(speculative, speculative=True)

    def retry(self, task: Task, attempt: int, failed_on: int | None = None) -> None:
        self._retries.append((task, attempt, failed_on))

    def __bool__(self) -> bool:
        return bool(self._retries or self._batches or self._speculative)

    def pop(self, worker: int | None = None) -> tuple[Task, int] | None:
        """The next task for `worker` to start and its attempt number; None if only retries that failed on
        it are waiting. Without a worker (a pool of one), any task."""
        for index, (task, attempt, failed_on) in enumerate(self._retries):
            if worker is None or failed_on != worker:
                del self._retries[index]
                return task, attempt
        if self._batches:
            chosen = next((i for i, batch in enumerate(self._batches) if batch.passed_over >= self.patience),
                          min(range(len(self._batches)), key=lambda i: len(self._batches[i].tasks)))
            for older in self._batches[:chosen]:
                older.passed_over += 1
            batch = self._batches[chosen]
            task = batch.tasks.popleft()
            if not batch.tasks:
                del self._batches[chosen]
            return task, 1
        if self._speculative:
            return self._speculative.popleft(), 1
        return None


# --- which workers go: the rules both executors apply -------------------------------------------------------


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
            _limit_torch_threads(self.threads)
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
                    attempt = _attempt(self._inline_trainer, task.spec, self.train_settings)
                if attempt.error is None:
                    break
            yield Outcome(task.key, task.spec, attempt.result, attempt.error, number, attempt.wall_s)

    # pool: persistent spawned workers, one task each at a time

    def _start_worker(self, slot: int) -> _Worker:
        ours, theirs = self._context.Pipe()
        env = self.environments[slot]
        heartbeat = self._context.RawValue("d", 0.0)
        args = (self.trainer_name, env, self.train_settings, self.data_dir, theirs, heartbeat)
        process = self._context.Process(target=_worker_main, name="optsweep-worker", args=args)
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
