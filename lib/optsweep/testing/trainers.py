"""Synthetic trainers with known loss surfaces, for testing the search, the run store and the executor.

Each obeys the trainer contract (`spec -> {"loss": ...}`) and is named in params as
`study.trainer: "optsweep.testing.trainers:<function>"`. Worker processes import this module by name, as any
trainer; a CLI subprocess also gets the tests' folder on PYTHONPATH (see `cli_env`), for the user plug-ins
(tests/user_optimizer.py) that the tests name.

Instrumentation for the tests, through environment variables (inherited by workers):
- SYNTH_CALLS: a file; every finished call appends one line `<hparams+seed as JSON>\t<pid>`, so tests can
  count trainings per config across processes and restarts.
- SYNTH_SLEEP: seconds each call sleeps (a stand-in for training time).
- SYNTH_PAUSE: a file; while it exists, a call waits before doing anything (lets a test freeze the sweep
  at a known point before killing it).
- SYNTH_MARKS: a folder for the trainers that misbehave only on their first attempt at a config.
- SYNTH_HANG: `always` makes `hangs_once` hang on every attempt.
- SYNTH_POISON: a file; the first worker process to call `poisoned` writes its pid there and fails every run.
- SYNTH_NO_START: a file; while it exists, a worker process cannot import this module (a replacement worker
  on a dead GPU). The test process imported it before, so only workers started afterwards fail.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]  # the repository this library is installed from (editable)
TESTS = REPO / "tests"  # the user plug-ins the tests name
CUDA_FAULT = "CUDA error: an illegal memory access was encountered (simulated)"  # what a broken GPU raises

if multiprocessing.parent_process() is not None and Path(os.environ.get("SYNTH_NO_START", "/nonexistent")).exists():
    raise RuntimeError("the GPU fell off the bus (simulated)")


# --- loss surfaces (functions of the hyperparameters only) ------------------------------------------------


def bowl_loss(h: dict[str, Any]) -> float:
    """Separable: optimum at lr 1e-2, weight_decay 0.2, beta2 0.99 (each on the test grids)."""
    return (
        3.0
        + 0.5 * math.log10(h["lr"] / 1e-2) ** 2
        + 2.0 * (h["weight_decay"] - 0.2) ** 2
        + 5.0 * (h["beta2"] - 0.99) ** 2
    )


def ridge_loss(h: dict[str, Any]) -> float:
    """Non-separable: a valley along lr x weight decay, x = log2(lr / 1e-3), y = weight_decay / 0.02.

    The best lr depends on the weight decay and vice versa, so one coordinate step at a time creeps along
    the valley over several passes towards its floor near x = y = 6.
    """
    x, y = math.log2(h["lr"] / 1e-3), h["weight_decay"] / 0.02
    return 3.0 + 0.05 * (x - y) ** 2 + 0.01 * (x + y - 12) ** 2


def scaling_loss(h: dict[str, Any], n_params: float, tokens: float) -> float:
    """A scale-aware surface: a Chinchilla-like floor, an lr optimum following Step Law's form
    lr* = 1.79 N^-0.713 D^0.307, and a weight-decay optimum at 0.1 that does not move."""
    best_lr = 1.79 * n_params**-0.713 * tokens**0.307
    floor = 1.7 + 20 / n_params**0.34 + 20 / tokens**0.28
    return floor + 0.3 * math.log(h["lr"] / best_lr) ** 2 + 0.5 * (h["weight_decay"] - 0.1) ** 2


# --- instrumentation --------------------------------------------------------------------------------------


def _identity(spec: dict[str, Any]) -> str:
    return json.dumps({"hparams": spec["hparams"], "seed": spec["seed"]}, sort_keys=True)


def _mark_first_attempt(spec: dict[str, Any]) -> bool:
    """True the first time this config is seen (per SYNTH_MARKS folder), False afterwards."""
    marks = Path(os.environ["SYNTH_MARKS"])
    marks.mkdir(parents=True, exist_ok=True)
    mark = marks / (hashlib.sha256(_identity(spec).encode()).hexdigest()[:16] + ".mark")
    try:
        mark.open("x").close()
        return True
    except FileExistsError:
        return False


def _finish(spec: dict[str, Any], result: dict[str, Any], default_sleep: float = 0.0) -> dict[str, Any]:
    """Apply pause and sleep, then log the finished call."""
    pause = os.environ.get("SYNTH_PAUSE")
    while pause and Path(pause).exists():
        time.sleep(0.02)
    time.sleep(float(os.environ.get("SYNTH_SLEEP", default_sleep)))
    calls = os.environ.get("SYNTH_CALLS")
    if calls:
        with open(calls, "a") as file:  # one short O_APPEND write per call: atomic across processes
            file.write(f"{_identity(spec)}\t{os.getpid()}\n")
    return result


def read_calls(path: Path) -> list[str]:
    """The config identities of every finished call logged in a SYNTH_CALLS file."""
    return [line.split("\t")[0] for line in path.read_text().splitlines()] if path.exists() else []


# --- trainers ------------------------------------------------------------------------------------------------


def bowl(spec: dict[str, Any]) -> dict[str, Any]:
    return _finish(spec, {"loss": bowl_loss(spec["hparams"])})


def scaling(spec: dict[str, Any]) -> dict[str, Any]:
    scale = spec["scale"]
    return _finish(spec, {"loss": scaling_loss(spec["hparams"], scale["n_params"], scale["tokens"])})


def ridge(spec: dict[str, Any]) -> dict[str, Any]:
    return _finish(spec, {"loss": ridge_loss(spec["hparams"])})


def diverging(spec: dict[str, Any]) -> dict[str, Any]:
    """The bowl, but lr >= 3e-2 diverges: reported the way real trainers do (a flag, or a non-finite loss).

    The flagged run carries a low loss on purpose: a search that looked only at the number would adopt it.
    """
    lr = spec["hparams"]["lr"]
    if lr >= 1e-1:
        return _finish(spec, {"loss": float("nan")})
    if lr >= 3e-2:
        return _finish(spec, {"loss": 0.5, "status": "diverged", "reason": "loss above 7 after warmup"})
    return bowl(spec)


def noisy(spec: dict[str, Any]) -> dict[str, Any]:
    """A flat surface plus seeded noise (std 1e-3, below the tests' 3e-3 tolerance): no config is better."""
    noise = random.Random(_identity(spec)).gauss(0.0, 1e-3)
    return _finish(spec, {"loss": 3.0 + noise})


def lucky_seed(spec: dict[str, Any]) -> dict[str, Any]:
    """The bowl, except that its optimum is lucky on seed 0 (0.05 below the bowl) and poor on every other
    seed (0.2 above): on the seeds' mean, its neighbour at beta2 0.95 (3.008 everywhere) is the best."""
    optimum = {"lr": 1e-2, "weight_decay": 0.2, "beta2": 0.99}
    luck = 0.0
    if all(spec["hparams"][h] == v for h, v in optimum.items()):
        luck = -0.05 if spec["seed"] == 0 else 0.2
    return _finish(spec, {"loss": bowl_loss(spec["hparams"]) + luck})


def sleeper(spec: dict[str, Any]) -> dict[str, Any]:
    """The bowl after SYNTH_SLEEP seconds (default 0.5): equal-length runs for the parallel-speed figure.
    The result says when the run started and ended (epoch seconds), for the occupancy benchmark."""
    started = time.time()
    result = _finish(spec, {"loss": bowl_loss(spec["hparams"])}, default_sleep=0.5)
    return {**result, "started": started, "ended": time.time()}


def whoami(spec: dict[str, Any]) -> dict[str, Any]:
    """Reports which process trained it and what it was pinned to."""
    return _finish(spec, {
        "loss": bowl_loss(spec["hparams"]),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    })


def checkpointing(spec: dict[str, Any]) -> dict[str, Any]:
    """`whoami` that first writes a checkpoint file into its run's `checkpoint_dir`, and reports that folder,
    its working directory and the CUDA allocator setting it got."""
    folder = Path(spec["checkpoint_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint.txt").write_text("step 1")
    return {**whoami(spec), "checkpoint_dir": str(folder), "cwd": os.getcwd(),
            "cuda_allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}


def reporter(spec: dict[str, Any]) -> dict[str, Any]:
    """The bowl after reporting 2 of 4 steps done (optsweep.live), then sleeping SYNTH_SLEEP seconds; its
    result carries curves like the default trainer's."""
    from ..live import report_progress

    loss = bowl_loss(spec["hparams"])
    for step in (1, 2):
        time.sleep(0.01)
        report_progress(step, 4, loss + 1.0 / step, tokens_per_s=1500.0)
    curves = {"train_curve": [[0, loss + 1.0], [3, loss + 0.25]], "eval_curve": [[4, loss]]}
    return _finish(spec, {"loss": loss, **curves})


def flaky(spec: dict[str, Any]) -> dict[str, Any]:
    """Raises on the first attempt at each config, succeeds on the retry."""
    if _mark_first_attempt(spec):
        raise RuntimeError("transient failure (first attempt)")
    return bowl(spec)


def broken_at_high_lr(spec: dict[str, Any]) -> dict[str, Any]:
    """Raises every time for lr >= 3e-2 (a crash, not a divergence)."""
    if spec["hparams"]["lr"] >= 3e-2:
        _finish(spec, {})
        raise RuntimeError(f"cannot train lr {spec['hparams']['lr']}")
    return bowl(spec)


def killer(spec: dict[str, Any]) -> dict[str, Any]:
    """SIGKILLs its own worker process on the first attempt at each config (never use with workers: 1)."""
    if _mark_first_attempt(spec):
        os.kill(os.getpid(), signal.SIGKILL)
    return whoami(spec)


def poisoned(spec: dict[str, Any]) -> dict[str, Any]:
    """`whoami`, except in one worker process (the first to call it claims SYNTH_POISON), which fails every run
    at once, as a GPU with a broken CUDA context does: with a CUDA error, or with SYNTH_POISON_ERROR=plain a
    RuntimeError that only its pace gives away."""
    poison = Path(os.environ["SYNTH_POISON"])
    try:
        with poison.open("x") as claim:
            claim.write(str(os.getpid()))
    except FileExistsError:
        pass
    if poison.read_text() == str(os.getpid()):
        raise RuntimeError(CUDA_FAULT if os.environ.get("SYNTH_POISON_ERROR") != "plain" else "poisoned worker")
    return whoami(spec)


def hangs_once(spec: dict[str, Any]) -> dict[str, Any]:
    """Reports one step, then hangs (no progress, never returns) on the first attempt at each config, as a run
    stuck in a collective or a wedged kernel does; `whoami` on the retry. SYNTH_HANG=always: every attempt."""
    from ..live import report_progress

    if _mark_first_attempt(spec) or os.environ.get("SYNTH_HANG") == "always":
        report_progress(1, 4, 5.0, tokens_per_s=100.0)
        time.sleep(30)  # far beyond the tests' stall timeouts, yet bounded: a watchdog that misses it fails the test
    return whoami(spec)


def steady(spec: dict[str, Any]) -> dict[str, Any]:
    """`whoami` after 2 s of progress reports every 0.2 s: slow, but never stalled."""
    from ..live import report_progress

    for step in range(1, 11):
        time.sleep(0.2)
        report_progress(step, 10, 5.0 - step / 10, tokens_per_s=100.0)
    return whoami(spec)


def cuda_fault(spec: dict[str, Any]) -> dict[str, Any]:
    """Fails every run with a CUDA error, in every worker (every GPU broken)."""
    raise RuntimeError(CUDA_FAULT)


# --- params files for these trainers ---------------------------------------------------------------------


def write_study(folder: Path, trainer: str, **sections: Any) -> Path:
    """A small params file (shaped like params/presets/micro.yaml) for a synthetic trainer, in `folder`.

    `sections` replace top-level sections (`grid`, `search`, `baseline`, ...); `study_*` keywords set keys
    of the `study` section, e.g. `study_workers=2`. The run store defaults to `folder/runs`.
    """
    study = {"name": "synthetic", "seed": 0, "trainer": f"optsweep.testing.trainers:{trainer}", "workers": 1,
             "store": str(folder / "runs"), "train": {"device": "cpu"}}
    study.update({key.removeprefix("study_"): value for key, value in sections.items() if key.startswith("study_")})
    raw = {
        "study": study,
        "scales": {
            "a": {"width": 32, "depth": 1, "heads": 2, "seq_len": 32, "batch_size": 8, "tokens": 8192},
            "b": {"width": 64, "depth": 1, "heads": 2, "seq_len": 32, "batch_size": 8, "tokens": 8192},
        },
        "baseline": {"lr": 3e-3, "min_lr_ratio": 0.0, "warmup": 4, "beta1": 0.9, "beta2": 0.95,
                     "weight_decay": 0.1, "eps": 1e-8, "clip": 1.0},
        "grid": {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decay": [0.0, 0.1, 0.2], "beta2": [0.9, 0.95, 0.99]},
        # Grids as given and no seed runs, unless a test asks: the search tests count the runs of one seed.
        "search": {"passes": 3, "tolerance": 3e-3, "extend_edges": 0, "noise_seeds": 0},
    }
    raw.update({key: value for key, value in sections.items() if not key.startswith("study_")})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for an `optsweep` subprocess whose params name a plug-in of tests/ (its workers inherit it)."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


OPTSWEEP = str(Path(sys.executable).parent / "optsweep")


def broken_while_marked(spec: dict[str, Any]) -> dict[str, Any]:
    """Raises while the file named by SYNTH_BROKEN exists (a fault that a later sweep no longer meets)."""
    if Path(os.environ["SYNTH_BROKEN"]).exists():
        _finish(spec, {})
        raise RuntimeError("device fault (simulated)")
    return bowl(spec)
