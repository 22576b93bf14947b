"""The `study:` section of params (data, tokenizer, lr transfer, training, Ray, the study itself) and the base of
every section: unknown keys are an error that lists the allowed ones."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..optimizers import OPTIONAL_HPARAMS

# AdamW's hyperparameters, in the order coordinate descent visits them by default. Another optimizer
# (optsweep.optimizers) declares its own names; those it shares with AdamW keep this order, the rest follow.
HPARAMS: tuple[str, ...] = ("lr", "min_lr_ratio", "warmup", "beta1", "beta2", "weight_decay", "eps", "clip")
ALL_HPARAMS: tuple[str, ...] = HPARAMS + OPTIONAL_HPARAMS

SCALE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class Strict(BaseModel):
    """Base for every params section: unknown keys are an error that lists the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                allowed = ", ".join(cls.model_fields)
                raise ValueError(f"unknown key {unknown[0]!r}; allowed: {allowed}")
        return data


# --- study-level settings -------------------------------------------------------------------------------


class DataSettings(Strict):
    """Where the text comes from and how much of it becomes token shards."""

    source: Literal["stdlib", "files", "hub"] = "stdlib"
    paths: list[str] = Field(default_factory=list, description="globs of local text files (source: files)")
    hub_dataset: str | None = Field(None, description="Hugging Face dataset name (source: hub)")
    hub_config: str | None = None
    hub_split: str = "train"
    hub_revision: str | None = Field(None, description="the dataset's commit or tag on the hub (pin it: main moves)")
    text_column: str = "text"
    train_tokens: int = Field(2_000_000, gt=0, description="tokens written to the training shard")
    val_tokens: int = Field(50_000, gt=0, description="held-out tokens, never trained on")
    seed: int = Field(0, ge=0, description="fixes the held-out split and the batch order")
    dir: str = "data/prepared"
    num_proc: int | None = Field(
        None, ge=1, description="tokenizing processes (default: one per 50M tokens, at most one per core)"
    )
    require_revisions: bool = Field(
        False, description="a hub dataset and a pretrained tokenizer must name their commit (hub_revision, "
                           "tokenizer.revision: 40 hex digits), checked before anything is downloaded",
    )

    @model_validator(mode="after")
    def _source_needs(self) -> DataSettings:
        if self.source == "files" and not self.paths:
            raise ValueError("source 'files' needs 'paths' (a list of globs)")
        if self.source == "hub" and not self.hub_dataset:
            raise ValueError("source 'hub' needs 'hub_dataset' (a dataset name)")
        return self


class TokenizerSettings(Strict):
    """A byte-level BPE trained on the corpus, or a pretrained tokenizer loaded by name or path."""

    kind: Literal["train", "pretrained"] = "train"
    vocab_size: int = Field(4096, ge=259, le=65536, description="for kind 'train'")
    train_chars: int = Field(20_000_000, gt=0, description="characters of corpus the BPE is trained on")
    # The official meta-llama repository is gated; this is an openly downloadable copy of the same tokenizer.
    name: str = "NousResearch/Llama-2-7b-hf"
    revision: str | None = Field(None, description="the pretrained tokenizer's commit or tag on the hub (pin it)")


class LrTransfer(Strict):
    """Lets the lr grid be stated at a reference width: lr(width) = lr * f(reference_width / width)."""

    rule: Literal["none", "inverse_width", "inverse_sqrt_width"] = "none"
    reference_width: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _needs_reference(self) -> LrTransfer:
        if self.rule != "none" and self.reference_width is None:
            raise ValueError(f"rule {self.rule!r} needs 'reference_width'")
        return self

    def factor(self, width: int) -> float:
        if self.rule == "none":
            return 1.0
        ratio = self.reference_width / width
        return ratio if self.rule == "inverse_width" else math.sqrt(ratio)


class DivergenceRule(Strict):
    """When a run has blown up (see optsweep.train.divergence): its smoothed train loss, after warmup, stays more
    than `rise` above its own best for `patience` steps."""

    rise: float = Field(0.5, gt=0, description="relative rise over the best smoothed loss that counts as blown up")
    patience: int = Field(10, ge=1, description="consecutive train steps above the rise before the run stops")
    smoothing: float = Field(0.1, gt=0, le=1, description="weight of the newest loss in the moving average")


class TrainSettings(Strict):
    """How the default trainer runs: device, precision, evaluation and divergence detection."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    threads_per_worker: int = Field(1, ge=1)
    micro_batch_size: int | None = Field(
        None, gt=0, description="sequences per forward/backward pass, gradients accumulated (default: the batch)"
    )
    checkpoint_every_s: float = Field(
        1800, ge=0, description="seconds between checkpoints inside a run (0 = none); a retried run resumes"
    )
    eval_points: int = Field(4, ge=1, description="held-out evaluations, the last one at the full budget")
    eval_tokens: int | None = Field(None, gt=0, description="held-out tokens per evaluation (default: all)")
    diverge_above: float | None = Field(
        None, gt=0, description="loss that ends a run as diverged after warmup (default: ln(vocab) + 1)"
    )
    divergence: DivergenceRule = Field(default_factory=DivergenceRule)
    decay_exclude: list[Literal["norm", "embedding", "bias"]] = Field(
        default_factory=lambda: ["norm", "embedding", "bias"]
    )
    # How the pool treats its workers, not how a run trains: excluded from model_dump, so out of the run
    # spec and the run key.
    retire_after_fast_failures: int = Field(
        3, ge=1, exclude=True,
        description="a worker whose runs fail this many times in a row, each within a minute, is retired",
    )
    stall_timeout_s: float = Field(
        1800, ge=0, exclude=True,
        description="a run that reports no progress for this long is killed and retried (0 = never)",
    )


class RaySettings(Strict):
    """Where the Ray backend (`study.executor: ray`) finds its cluster; see optsweep.execution.ray_cluster."""

    address: str = Field(
        "local", description="'local' (a private cluster here), 'auto' (the cluster of this node) or a head's host:port"
    )
    dashboard: bool = Field(True, description="start the Ray dashboard with a 'local' cluster")
    progress_every_s: float = Field(30.0, gt=0, description="seconds between progress lines of the runs in flight")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value not in ("local", "auto") and not re.fullmatch(r"[\w.-]+:\d+", value):
            raise ValueError(f"must be 'local', 'auto' or host:port of a Ray head, got {value!r}")
        return value


class StudySettings(Strict):
    name: str
    seed: int = Field(0, ge=0)
    trainer: str = "optsweep.train:train"
    optimizer: str = Field(
        "adamw", description="the optimizer that `baseline` and `grid` tune: built in, or 'module:function'"
    )
    workers: int | Literal["auto"] = Field(
        "auto", description="worker processes: a count, or 'auto' (GPUs x workers_per_gpu, else one per CPU core)"
    )
    workers_per_gpu: int = Field(1, ge=1, description="runs sharing one GPU when workers is 'auto'")
    store: str = Field("runs", description="run store folder: every finished run, never trained twice")
    data: DataSettings = Field(default_factory=DataSettings)
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)
    lr_transfer: LrTransfer = Field(default_factory=LrTransfer)
    train: TrainSettings = Field(default_factory=TrainSettings)
    executor: Literal["local", "ray"] = Field("local", description="a process pool on this machine, or Ray actors")
    ray: RaySettings = Field(default_factory=RaySettings)
    tracker: Literal["none", "wandb"] = Field("none", description="also log every run to Weights & Biases")

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"must be 'auto' or a count of at least 1, got {value!r}")
        return value

    @field_validator("trainer")
    @classmethod
    def _module_colon_function(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"must be 'module:function', got {value!r}")
        return value
