"""The default trainer: one run spec (see trainer.py) -> one result.

A run trains the scale's Llama-2 on exactly `scale.steps` batches of `batch_size x seq_len` tokens from
the prepared shards, evaluates the held-out loss at `train.eval_points` evenly spaced steps (the last at
the full budget) and returns the final held-out loss with curves, throughput and provenance.

Common random numbers: the init depends only on `spec.seed` and the batch order only on the data seed, so
every config of a sweep starts from the same weights and sees the same batches.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from .config import ParamsError
from .data import Shards, TrainBatches, load_shards, val_batches
from .jsonio import to_strict
from .model import build_model, count_params
from .optim import build_optimizer, clip_gradients
from .trainer import DEFAULT_TRAINER, code_identity

SYNC_EVERY = 16  # steps between reads of the train loss on the host (each read waits for the GPU)
CURVE_POINTS = 100  # train-curve samples kept in the result


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


class Run:
    """One run's model, optimizer, schedule and batch stream. `step()` does one optimizer update."""

    def __init__(self, spec: dict[str, Any], shards: Shards, runtime: Runtime) -> None:
        scale, hparams, settings = spec["scale"], spec["hparams"], spec["train"]
        self.runtime = runtime
        self.clip = hparams["clip"]
        self.micro_batch = settings.get("micro_batch_size") or scale["batch_size"]
        self.model = build_model(scale, seed=spec["seed"]).to(runtime.device)
        self.optimizer, self.scheduler = build_optimizer(
            self.model, hparams, scale["steps"], settings["decay_exclude"], fused=runtime.device.type == "cuda"
        )
        if settings["compile"]:
            self.model.compile(dynamic=False)  # fixed shapes: one graph per batch shape
        self.batches = TrainBatches(shards.train, scale["batch_size"], scale["seq_len"], spec["data"]["seed"])
        self.steps_done = 0
        self.next_batch = self.to_device(self.batches.batch(0))

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """On CUDA, an asynchronous copy from pinned memory that overlaps with the running step."""
        if self.runtime.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.runtime.device, non_blocking=True)

    def loss(self, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy of packed windows: causal attention without a mask, fixed shapes, and the
        loss taken from the hidden states in chunks, never from full logits (model.py, loss.py)."""
        with self.runtime.autocast():
            return self.model(tokens[:, :-1], targets=tokens[:, 1:], reduction=reduction)

    def step(self) -> torch.Tensor:
        """One update on the next batch (accumulated over micro-batches); returns the loss, on the device."""
        batch = self.next_batch
        self.steps_done += 1
        self.next_batch = self.to_device(self.batches.batch(self.steps_done))
        self.model.train()
        total = torch.zeros((), device=self.runtime.device)
        for micro in batch.split(self.micro_batch):
            loss = self.loss(micro) * (len(micro) / len(batch))
            loss.backward()
            total += loss.detach()
        clip_gradients(self.model, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    @torch.no_grad()
    def evaluate(self, batches: list[torch.Tensor]) -> float:
        """Mean next-token loss over the held-out windows."""
        self.model.eval()
        total, count = torch.zeros((), device=self.runtime.device), 0
        for batch in batches:
            for micro in self.to_device(batch).split(self.micro_batch):
                total += self.loss(micro, reduction="sum")
                count += micro[:, 1:].numel()
        return (total / count).item()


def eval_steps(steps: int, points: int) -> list[int]:
    """`points` evenly spaced steps (fewer when the run is shorter), the last one at `steps`."""
    return sorted({max(1, round(steps * i / points)) for i in range(1, points + 1)})


def first_divergence(losses: list[float], start: int, warmup: int, threshold: float) -> int | None:
    """The first step from `start` whose loss is non-finite, or above `threshold` once warmup is over."""
    for step in range(start, len(losses)):
        loss = losses[step]
        if not math.isfinite(loss) or (step >= warmup and loss > threshold):
            return step
    return None


@functools.lru_cache(maxsize=1)
def _code() -> str:
    return code_identity(DEFAULT_TRAINER)


def configure_determinism(runtime: Runtime, threads: int) -> None:
    """Same spec, same bits on the CPU: a fixed thread count and deterministic kernels."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(runtime.device.type == "cpu")


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one run; divergence ends it early with status "diverged" (never an exception)."""
    started = time.perf_counter()
    scale, hparams, settings = spec["scale"], spec["hparams"], spec["train"]
    runtime = resolve_runtime(settings)
    configure_determinism(runtime, settings["threads_per_worker"])
    shards = load_shards(spec["data"])
    run = Run(spec, shards, runtime)
    n_params, total_params = count_params(run.model)
    held_out = val_batches(shards.val, scale["batch_size"], scale["seq_len"], settings["eval_tokens"])
    threshold = settings["diverge_above"] or math.log(spec["data"]["vocab_size"]) + 1.0
    steps, checkpoints = scale["steps"], eval_steps(scale["steps"], settings["eval_points"])

    train_losses: list[float] = []
    pending: list[torch.Tensor] = []
    eval_curve: list[list[float]] = []
    diverged_at, eval_seconds = None, 0.0
    loop_started = time.perf_counter()
    for step in range(steps):
        pending.append(run.step())
        if len(pending) == SYNC_EVERY or step + 1 in checkpoints:
            first = len(train_losses)
            train_losses.extend(torch.stack(pending).tolist())
            pending.clear()
            diverged_at = first_divergence(train_losses, first, hparams["warmup"], threshold)
            if diverged_at is not None:
                break
        if step + 1 in checkpoints:
            eval_started = time.perf_counter()
            eval_curve.append([step + 1, run.evaluate(held_out)])
            eval_seconds += time.perf_counter() - eval_started
    train_seconds = time.perf_counter() - loop_started - eval_seconds

    final = eval_curve[-1][1] if diverged_at is None else math.nan
    status = "ok" if math.isfinite(final) else "diverged"
    tokens = run.steps_done * scale["batch_size"] * scale["seq_len"]
    stride = max(1, len(train_losses) // CURVE_POINTS)
    sampled = sorted({*range(0, len(train_losses), stride), len(train_losses) - 1})
    return to_strict({
        "loss": final if status == "ok" else None,
        "status": status,
        "train_curve": [[s, train_losses[s]] for s in sampled],
        "eval_curve": eval_curve,
        "tokens_per_s": tokens / train_seconds,
        "wall_s": time.perf_counter() - started,
        "n_params": n_params,
        "total_params": total_params,
        "tokens": tokens,
        "flops": scale["flops_per_token"] * tokens,
        "steps": run.steps_done,
        "device": runtime.name,
        "precision": runtime.precision,
        "diverged_at_step": diverged_at,
        "provenance": {
            "data_hash": spec["data"]["hash"],
            "tokenizer": spec["data"]["tokenizer"],
            "code": _code(),
            "seed": spec["seed"],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    })
