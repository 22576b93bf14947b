"""The default trainer: one run spec (see optsweep.runs.trainer) -> one result.

A run trains the scale's Llama-2 on exactly `scale.steps` batches of `batch_size x seq_len` tokens from
the prepared shards, evaluates the held-out loss at `train.eval_points` evenly spaced steps (the last at
the full budget) and returns the final held-out loss with curves, throughput and provenance.

Common random numbers: the init depends only on `spec.seed` and the batch order only on `spec.batch_seed`,
so every config of a sweep starts from the same weights and sees the same batches.

Surviving real scale:
- Every `train.checkpoint_every_s` seconds the run saves its whole state (model, optimizer, schedule,
  step, curves, RNG) to `spec.checkpoint_dir`, atomically and fsynced, keeping the previous one too. A run
  that finds a checkpoint resumes from it; since batch `step` is a function of the seed and the step, the
  resumed run ends bitwise where an uninterrupted one would on the CPU. An unreadable checkpoint is moved
  aside and the run resumes from the previous one, or from step 0.
- A run that blows up (optsweep.train.divergence) stops early with status "diverged" and the rule that fired.
- A CUDA out-of-memory error halves the micro-batch and continues from the last checkpoint (or the start),
  once the failed attempt's model and optimizer are freed.
- A compiled model keeps every layout a worker trains compiled (`RECOMPILE_LIMIT`), and says so in one line
  if a shape falls back to eager anyway.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from ..data.batches import Shards, TrainBatches, load_shards, val_batches
from ..jsonio import to_strict, write_json
from ..live import report_progress
from ..optimizers import build as build_optimizer
from ..optimizers.parts import clip_gradients, clipped_parameters
from ..params.settings import ParamsError
from ..runs.trainer import DEFAULT_TRAINER, code_identity
from .divergence import Divergence, DivergenceMonitor
from .model import build_model, count_params

# Bump when a change alters results in a way the code itself does not show (a data-order convention, say):
# it is part of the code identity, so every stored run is trained again.
TRAINER_VERSION = 2
SYNC_EVERY = 16  # steps between reads of the train loss on the host (each read waits for the GPU)
CURVE_POINTS = 100  # train-curve samples kept in the result
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.previous.pt"  # kept, so that an unreadable newest one costs one interval
PROGRESS_FILE = "progress.json"  # the checkpoint's step and time, readable without torch
# dynamo compiles the model's forward once per (model shape, micro-batch) layout and mode (train, eval), and
# counts all of them against one limit per worker process (torch's default: 8), after which new shapes run
# eager for the worker's lifetime. A law phase's widths times the micro-batches that OOM halvings walk
# through need a few dozen graphs; torch's accumulated_recompile_limit (256) stays the overall cap.
RECOMPILE_LIMIT = 128
IGNORED_TARGET = -100  # cross-entropy's ignore_index: a padding row of an eval micro-batch adds nothing


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision a run computes."""

    device: torch.device
    precision: str  # "bf16" (autocast; weights and optimizer state stay fp32) or "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"


def resolve_runtime(settings: dict[str, Any]) -> Runtime:
    """"auto" means CUDA when present; precision "auto" means bf16 on CUDA, fp32 on the CPU."""
    kind = settings["device"]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ParamsError("study.train.device: 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    precision = settings["precision"]
    if precision == "auto":
        precision = "bf16" if kind == "cuda" else "fp32"
    return Runtime(torch.device(kind), precision)


class TrainingRun:
    """One run's model, optimizer, schedule and batch stream. `step()` does one optimizer update."""

    def __init__(self, spec: dict[str, Any], shards: Shards, runtime: Runtime, micro_batch: int | None = None) -> None:
        scale, hparams, settings = spec["scale"], spec["hparams"], spec["train"]
        self.runtime = runtime
        self.clip = hparams["clip"]
        self.micro_batch = micro_batch or settings.get("micro_batch_size") or scale["batch_size"]
        self.model = build_model(scale, seed=spec["seed"]).to(runtime.device)
        self.optimizer, self.scheduler = build_optimizer(
            spec["optimizer"]["name"], self.model, hparams, scale["steps"], settings["decay_exclude"],
            fused=runtime.device.type == "cuda",
        )
        self.clipped = clipped_parameters(self.optimizer, self.model)
        if settings["compile"]:
            allow_recompiles()
            self.model.compile(dynamic=False)  # fixed shapes: one graph per batch shape
        self.batches = TrainBatches(shards.train, scale["batch_size"], scale["seq_len"], spec["batch_seed"])
        self.steps_done = 0
        self.next_batch = self.to_device(self.batches.batch(0))

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs besides its curves (see `Progress`)."""
        rng = {"cpu": torch.get_rng_state()}
        if self.runtime.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.runtime.device)
        return {"steps_done": self.steps_done, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.runtime.device)
        self.steps_done = state["steps_done"]
        self.next_batch = self.to_device(self.batches.batch(self.steps_done))

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """On CUDA, an asynchronous copy from pinned memory that overlaps with the running step."""
        if self.runtime.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.runtime.device, non_blocking=True)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy of packed windows: causal attention without a mask, fixed shapes, and the
        loss taken from the hidden states in chunks, never from full logits (model.py, loss.py)."""
        with self.runtime.autocast():
            return self.model(inputs, targets=targets, reduction=reduction)

    def step(self) -> torch.Tensor:
        """One update on the next batch (accumulated over micro-batches); returns the loss, on the device."""
        batch = self.next_batch
        self.steps_done += 1
        self.next_batch = self.to_device(self.batches.batch(self.steps_done))
        self.model.train()
        total = torch.zeros((), device=self.runtime.device)
        for micro in batch.split(self.micro_batch):
            loss = self.loss(micro[:, :-1], micro[:, 1:]) * (len(micro) / len(batch))
            loss.backward()
            total += loss.detach()
        clip_gradients(self.clipped, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    @torch.no_grad()
    def evaluate(self, batches: list[torch.Tensor]) -> float:
        """Mean next-token loss over the held-out windows."""
        self.model.eval()
        total = torch.zeros((), device=self.runtime.device)
        for batch in batches:
            for inputs, targets in whole_micro_batches(self.to_device(batch), self.micro_batch):
                total += self.loss(inputs, targets, reduction="sum")
        count = sum(batch[:, 1:].numel() for batch in batches)  # the real targets, none of the padding
        return (total / count).item()


def whole_micro_batches(windows: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) of `size` windows each. A short last micro-batch (the held-out windows rarely divide
    evenly) is padded with copies of its first window whose targets are ignored: a compiled model then sees
    one eval shape, not a second graph for the remainder, and the loss sums the same tokens as before.
    Padding whole windows before slicing keeps the strides of the unpadded ones, which dynamo guards on too."""
    for micro in windows.split(size):
        input_windows = target_windows = micro
        if missing := size - len(micro):
            input_windows = torch.cat([micro, micro[:1].expand(missing, -1)])
            target_windows = torch.cat([micro, torch.full_like(micro[:1], IGNORED_TARGET).expand(missing, -1)])
        yield input_windows[:, :-1], target_windows[:, 1:]


class _EagerFallbackLine(logging.Filter):
    """dynamo's warning that a function hit its recompile limit (five lines among a worker's logs, easy to
    miss) as one line of the trainer's: the limit, the function, the last reason it recompiled."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("torch._dynamo hit config."):
            return True
        said = "; ".join(line.strip() for line in message.splitlines()[:3])
        _log(f"{said}; new shapes of that function run eager from now on")
        return False


def allow_recompiles() -> None:
    """Raise dynamo's recompile limit to `RECOMPILE_LIMIT` (never lower it), and have it say in one line when
    a shape falls back to eager anyway."""
    import torch._dynamo  # loaded only by runs that compile

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    logger = logging.getLogger("torch._dynamo.convert_frame")
    if not any(isinstance(existing, _EagerFallbackLine) for existing in logger.filters):
        logger.addFilter(_EagerFallbackLine())


def eval_steps(steps: int, points: int) -> list[int]:
    """`points` evenly spaced steps (fewer when the run is shorter), the last one at `steps`."""
    return sorted({max(1, round(steps * i / points)) for i in range(1, points + 1)})


@functools.lru_cache(maxsize=1)
def _code() -> str:
    return code_identity(DEFAULT_TRAINER)


def configure_determinism(runtime: Runtime, threads: int) -> None:
    """Same spec, same bits on the CPU: a fixed thread count and deterministic kernels."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(runtime.device.type == "cpu")


@dataclass
class Progress:
    """What a run has done so far: saved with its checkpoint, returned in its result."""

    micro_batch: int
    train_losses: list[float] = field(default_factory=list)
    eval_curve: list[list[float]] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: list[int] = field(default_factory=list)  # the step of each resume
    oom_halvings: int = 0


class Checkpointer:
    """The newest two checkpoints of one run in its own folder.

    A save writes a temp file and fsyncs it, renames the newest checkpoint to the previous one and the temp
    file to the newest, then fsyncs the folder: a crash or a power cut at any point leaves at least one whole
    checkpoint on disk. A load takes the newest one it can read, and moves an unreadable one aside."""

    def __init__(self, folder: str | None, every_s: float):
        self.folder = Path(folder) if folder and every_s > 0 else None
        self.every_s = every_s
        self.last = time.monotonic()

    def load(self) -> tuple[dict[str, Any], Progress] | None:
        if self.folder is None:
            return None
        found = [path for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE)
                 if (path := self.folder / name).is_file()]
        for index, path in enumerate(found):
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                return saved["run"], Progress(**saved["progress"])
            except MemoryError:  # the file may be fine: the host is short of memory
                raise
            except Exception as error:  # anything else that stops this code reading back its own file
                aside = _move_aside(path)
                fallback = "the previous checkpoint" if index + 1 < len(found) else "step 0"
                _log(f"checkpoint {path} is unreadable ({_first_line(error)}); moved it aside to {aside.name}, "
                     f"resuming from {fallback}")
        return None

    def due(self) -> bool:
        return self.folder is not None and time.monotonic() - self.last >= self.every_s

    def save(self, run: TrainingRun, progress: Progress) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        newest, tmp = self.folder / CHECKPOINT_FILE, self.folder / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
        with open(tmp, "wb") as handle:
            torch.save({"run": run.state(), "progress": progress.__dict__}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if newest.is_file():
            os.replace(newest, self.folder / PREVIOUS_CHECKPOINT_FILE)
        os.replace(tmp, newest)
        write_json(self.folder / PROGRESS_FILE, {"step": run.steps_done, "time": time.time()})
        _fsync_folder(self.folder)  # the renames are on disk only once the folder's entries are
        self.last = time.monotonic()


def _move_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint out of the way, keeping it for a post-mortem (the store deletes the
    folder with the run's result)."""
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, aside)
    return aside


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def divergence_monitor(spec: dict[str, Any]) -> DivergenceMonitor:
    """The run's divergence rule: `train.divergence`, and `train.diverge_above` (default ln(vocab) + 1)."""
    settings, rule = spec["train"], spec["train"]["divergence"]
    threshold = settings["diverge_above"] or math.log(spec["scale"]["vocab_size"]) + 1.0
    return DivergenceMonitor(spec["hparams"]["warmup"], threshold, rule["rise"], rule["patience"], rule["smoothing"])


def _log(message: str) -> None:
    print(f"optsweep train: {message}", file=sys.stderr, flush=True)


def _largest_divisor_at_most(batch: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if batch % d == 0)


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one run; divergence ends it early with status "diverged" (never an exception).

    A CUDA out-of-memory error halves the micro-batch and tries again, from the last checkpoint if any."""
    scale, settings = spec["scale"], spec["train"]
    micro_batch = settings.get("micro_batch_size") or scale["batch_size"]
    halvings = 0
    while True:
        release_memory()  # what the worker's previous run or this run's failed attempt left behind
        try:
            return _train(spec, micro_batch, halvings)
        except torch.cuda.OutOfMemoryError:  # leaving this block drops the traceback, and the attempt with it
            if micro_batch == 1:
                raise
        micro_batch = _largest_divisor_at_most(scale["batch_size"], micro_batch // 2)
        halvings += 1
        _log(f"CUDA out of memory; trying again with micro-batch {micro_batch}")


def release_memory() -> None:
    """Free unreachable models and optimizers, then hand their CUDA blocks back. A compiled model is a
    reference cycle (it holds its own compiled forward), which only the cycle collector frees, so emptying
    the CUDA cache without collecting first would keep its weights and optimizer state on the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train(spec: dict[str, Any], micro_batch: int, halvings: int) -> dict[str, Any]:
    started = time.perf_counter()
    scale, settings = spec["scale"], spec["train"]
    runtime = resolve_runtime(settings)
    configure_determinism(runtime, settings["threads_per_worker"])
    shards = load_shards(spec["data"])
    checkpointer = Checkpointer(spec.get("checkpoint_dir"), settings["checkpoint_every_s"])
    saved = checkpointer.load()
    if saved is not None:
        micro_batch = min(micro_batch, saved[1].micro_batch)  # a run that needed a smaller one still does
    run = TrainingRun(spec, shards, runtime, micro_batch)
    progress = Progress(micro_batch, oom_halvings=halvings)
    if saved is not None:
        run.load_state(saved[0])
        progress = Progress(**{**saved[1].__dict__, "micro_batch": micro_batch, "oom_halvings": halvings})
        progress.resumed_from.append(run.steps_done)
        _log(f"resuming from the checkpoint at step {run.steps_done} of {scale['steps']}")
    n_params, total_params = count_params(run.model)
    held_out = val_batches(shards.val, scale["batch_size"], scale["seq_len"], settings["eval_tokens"])
    monitor = divergence_monitor(spec)
    monitor.observe(progress.train_losses)  # a resumed run's curve rebuilds the monitor's state
    divergence: Divergence | None = None
    steps, checkpoints = scale["steps"], eval_steps(scale["steps"], settings["eval_points"])

    pending: list[torch.Tensor] = []
    segment_started = time.perf_counter()
    for step in range(run.steps_done, steps):
        pending.append(run.step())
        at_eval = step + 1 in checkpoints
        if len(pending) == SYNC_EVERY or at_eval:
            losses = torch.stack(pending).tolist()
            pending.clear()
            progress.train_losses.extend(losses)
            seconds = progress.train_seconds + time.perf_counter() - segment_started
            tokens = (step + 1) * scale["batch_size"] * scale["seq_len"]
            report_progress(step + 1, steps, losses[-1], tokens / seconds if seconds > 0 else 0.0)
            divergence = monitor.observe(losses)
            if divergence is not None:
                break
        if at_eval:
            progress.train_seconds += time.perf_counter() - segment_started
            progress.eval_curve.append([step + 1, run.evaluate(held_out)])
            segment_started = time.perf_counter()
        if not pending and checkpointer.due() and step + 1 < steps:
            progress.train_seconds += time.perf_counter() - segment_started
            checkpointer.save(run, progress)
            segment_started = time.perf_counter()
    progress.train_seconds += time.perf_counter() - segment_started
    return _result(spec, run, progress, divergence, runtime, (n_params, total_params), time.perf_counter() - started)


def _result(spec: dict[str, Any], run: TrainingRun, progress: Progress, divergence: Divergence | None, runtime: Runtime,
            counts: tuple[int, int], wall_s: float) -> dict[str, Any]:
    scale = spec["scale"]
    final = progress.eval_curve[-1][1] if divergence is None else math.nan
    status = "ok" if math.isfinite(final) else "diverged"
    tokens = run.steps_done * scale["batch_size"] * scale["seq_len"]
    losses = progress.train_losses
    stride = max(1, len(losses) // CURVE_POINTS)
    sampled = sorted({*range(0, len(losses), stride), len(losses) - 1}) if losses else []
    return to_strict({
        "loss": final if status == "ok" else None,
        "status": status,
        "train_curve": [[s, losses[s]] for s in sampled],
        "eval_curve": progress.eval_curve,
        "tokens_per_s": tokens / progress.train_seconds if progress.train_seconds > 0 else None,
        "wall_s": wall_s,
        "n_params": counts[0],
        "total_params": counts[1],
        "tokens": tokens,
        "flops": scale["flops_per_token"] * tokens,
        "steps": run.steps_done,
        "device": runtime.name,
        "precision": runtime.precision,
        "micro_batch_size": progress.micro_batch,
        "oom_halvings": progress.oom_halvings,
        "resumed_from": progress.resumed_from,
        "diverged_at_step": divergence.step if divergence else None,
        "reason": divergence.describe() if divergence else None,
        "divergence_rule": spec["train"]["divergence"],
        "provenance": {
            "data_hash": spec["data"]["hash"],
            "tokenizer": spec["data"]["tokenizer"],
            "code": _code(),
            "trainer_version": TRAINER_VERSION,
            "optimizer": spec["optimizer"],
            "seed": spec["seed"],
            "batch_seed": spec["batch_seed"],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    })
