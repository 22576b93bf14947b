"""The pool's workers: which devices and how many, the environment each gets, and the worker process itself
(one warm trainer, one attempt at a time, gone with its parent)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

from ..live import RunProgress, reporting_to
from ..params.settings import ParamsError
from ..params.study import StudySettings
from ..runs.trainer import DEFAULT_TRAINER, Trainer, load_trainer
from .preflight import PreflightError, check_device, preflight
from .tasks import Attempt

PARENT_POLL_S = 1.0  # how often a worker checks that the main process is still alive
CUDA_ALLOCATOR = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


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


def train_once(trainer: Trainer, spec: dict[str, Any], train_settings: dict[str, Any]) -> Attempt:
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


def limit_torch_threads(threads: int) -> None:
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


def worker_main(trainer_name: str, env: dict[str, str], train_settings: dict[str, Any], data_dir: str | None,
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
        limit_torch_threads(int(env["OMP_NUM_THREADS"]))
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
            attempt = train_once(trainer, task.spec, train_settings)
        connection.send((task.key, attempt))
