"""Study parameters: the one place where a params file is read, validated and its derived values computed.

Every user-facing error here is a `ParamsError` whose message is one line naming the file, the key and
what is allowed, so that bad input fails before any data is prepared or any run is trained.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ParamsError
from .optimizers import OPTIONAL_HPARAMS, load_optimizer, resolve_hparams
from .provenance import stable_hash

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
    """When a run has blown up (see optsweep.divergence): its smoothed train loss, after warmup, stays more
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
    """Where the Ray backend (`study.executor: ray`) finds its cluster; see optsweep.ray_executor."""

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


# --- scales and hyperparameters ---------------------------------------------------------------------------


class Scale(Strict):
    """A (model size, token budget) setting. Derived values are properties, never typed in."""

    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    heads: int = Field(gt=0)
    ffn_width: int | None = Field(None, gt=0, description="default 4 * width, as in the original study")
    seq_len: int = Field(gt=0)
    batch_size: int = Field(gt=0, description="sequences per optimizer step")
    tokens: int = Field(gt=0, description="training token budget")
    micro_batch_size: int | None = Field(
        None, gt=0, description="sequences per forward/backward pass at this scale (default: study.train's)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Scale:
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if (self.width // self.heads) % 2:
            raise ValueError(f"head dim width/heads ({self.width // self.heads}) must be even for RoPE")
        if self.tokens < self.seq_len * self.batch_size:
            raise ValueError(
                f"tokens ({self.tokens}) must cover at least one step of batch_size * seq_len "
                f"({self.batch_size * self.seq_len})"
            )
        return self

    @property
    def ffn(self) -> int:
        return self.ffn_width or 4 * self.width

    @property
    def n_params(self) -> int:
        """Non-embedding parameters: attention (4 d^2) and SwiGLU MLP (3 d ff) per layer, plus RMSNorms."""
        return self.depth * (4 * self.width**2 + 3 * self.width * self.ffn + 2 * self.width) + self.width

    def steps(self, batch_size: int | None = None) -> int:
        """Optimizer steps that spend the token budget (the last partial step is dropped)."""
        return self.tokens // ((batch_size or self.batch_size) * self.seq_len)

    def flops_per_token(self, vocab_size: int) -> int:
        """Training FLOPs per token: 6 x matmul params (incl. the output head) + causal attention (PaLM)."""
        matmul = self.depth * (4 * self.width**2 + 3 * self.width * self.ffn) + self.width * vocab_size
        return 6 * matmul + 12 * self.depth * self.width * self.seq_len

    def derived(self, vocab_size: int, batch_size: int | None = None) -> dict[str, Any]:
        """The scale as a run spec carries it: declared fields plus every derived value."""
        batch = batch_size or self.batch_size
        steps = self.steps(batch)
        return {
            **self.model_dump(exclude={"micro_batch_size"}),  # a layout setting: it travels in spec["train"]
            "ffn_width": self.ffn,
            "batch_size": batch,
            "vocab_size": vocab_size,
            "n_params": self.n_params,
            "steps": steps,
            "tokens": steps * batch * self.seq_len,
            "flops_per_token": self.flops_per_token(vocab_size),
        }


Hparams = dict[str, float | int]  # one configuration: a value per hyperparameter of the optimizer


class OptimizerStudy(Strict):
    """Another optimizer, tuned by the same coordinate descent at the same scales as the study's own and
    compared with it (the speedup over the tuned AdamW). `StudyParams.for_optimizer` makes its study."""

    optimizer: str | None = Field(None, description="built-in name or 'module:function' (default: the key)")
    baseline: dict[str, float | int] = Field(description="start values (the rest: the optimizer's defaults)")
    grid: dict[str, list[float]]
    order: list[str] | None = Field(None, description="coordinate order (default: as for the study's optimizer)")
    free: list[str] | None = Field(None, description="hyperparameters the search may move (default: all)")


class SearchSettings(Strict):
    """Coordinate descent: which hyperparameters move, in which order, and when to stop."""

    passes: int = Field(3, ge=1, description="upper bound on full passes over the free hyperparameters")
    order: list[str] | None = Field(None, description="coordinate order (default: the grid's order)")
    free: list[str] | None = Field(None, description="hyperparameters the search may move (default: all)")
    tolerance: float = Field(3e-3, ge=0, description="a challenger must beat the incumbent by more")
    tolerance_kind: Literal["absolute", "relative"] = "absolute"
    stop_rule: Literal["pass", "neighbourhood"] = "pass"
    speculate: int = Field(
        0, ge=0, description="lines ahead trained on idle workers of a phase's pool (0 = none; may waste runs)"
    )
    extend_edges: int = Field(
        2, ge=0, description="values a grid may grow by at each end when the optimum lands on its edge (0 = off)"
    )
    noise_seeds: int = Field(
        2, ge=0, description="extra seeds for the best config and its competitors: the noise the verdicts need"
    )
    noise_candidates: int = Field(2, ge=0, description="nearest competitors re-evaluated on noise seeds")
    noise_varies: Literal["both", "init", "data_order"] = Field(
        "both", description="what the noise seeds change: the initialisation, the batch order, or both"
    )


TOKENS_PER_PARAM = 20  # Chinchilla-optimal data: 1x Chinchilla is 20 tokens per (non-embedding) parameter


class SpeedupTarget(Strict):
    """A model size and data budget at which the speedup laws predict each optimizer's speedup."""

    n_params: float = Field(gt=0, description="non-embedding parameters")
    chinchilla: float = Field(gt=0, description="data as a multiple of Chinchilla's 20 tokens per parameter")

    @property
    def tokens(self) -> float:
        return TOKENS_PER_PARAM * self.chinchilla * self.n_params


DEFAULT_SPEEDUP_TARGETS = (SpeedupTarget(n_params=7e9, chinchilla=1), SpeedupTarget(n_params=7e9, chinchilla=8))


class AnalysisSettings(Strict):
    """Sensitivity decisions: how much loss counts as mattering."""

    threshold: float = Field(0.0025, gt=0, description="loss a hyperparameter must cost to matter")
    threshold_kind: Literal["absolute", "relative"] = "relative"
    noise: float | None = Field(
        None, gt=0, description="the known run-to-run std of one config's loss (decides over seeds and differences)"
    )
    noise_kind: Literal["absolute", "relative"] = Field(
        "absolute", description="noise in loss units, or as a fraction of each scale's best loss"
    )
    divergence_rise: float = Field(
        0.5, gt=0, description="a finite loss this much (relative) above its scale's best is counted as diverged"
    )
    significance: float = Field(
        0.05, gt=0, lt=1, description="family-wise error of the sensitive verdicts (Holm over hyperparameters)"
    )
    laws_for: list[str] = Field(
        default_factory=list, description="hyperparameters to fit a law for even when they are not sensitive"
    )
    speedup_targets: list[SpeedupTarget] = Field(
        default_factory=lambda: list(DEFAULT_SPEEDUP_TARGETS),
        description="sizes and data budgets where the speedup-against-size laws predict (default 7B at 1x and 8x)",
    )


class StudyParams(Strict):
    study: StudySettings
    scales: dict[str, Scale]
    law_scales: dict[str, Scale] = Field(default_factory=dict)
    baseline: dict[str, float | int]
    grid: dict[str, list[float]]
    search: SearchSettings = Field(default_factory=SearchSettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    optimizers: dict[str, OptimizerStudy] = Field(
        default_factory=dict, description="other optimizers tuned the same way and compared with the study's"
    )

    @field_validator("scales")
    @classmethod
    def _at_least_one(cls, scales: dict[str, Scale]) -> dict[str, Scale]:
        if not scales:
            raise ValueError("needs at least 1 phase-1 scale")
        return scales

    @field_validator("scales", "law_scales", "optimizers")
    @classmethod
    def _names(cls, entries: dict[str, Any]) -> dict[str, Any]:
        for name in entries:  # they name files, folders and DVC stages
            if not SCALE_NAME.fullmatch(name):
                raise ValueError(f"name {name!r} must be letters, digits, '_', '-' or '.'")
        return entries

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, values in grid.items():
            if not values:
                raise ValueError(f"{name}: empty grid; give at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: repeated grid values {values}")
        return grid

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyParams:
        shared = set(self.scales) & set(self.law_scales)
        if shared:
            raise ValueError(f"scale {sorted(shared)[0]!r} is in both 'scales' and 'law_scales'")
        warmup = self.hparams_with({}, key="baseline")["warmup"]
        for name, values in self.grid.items():
            for value in values:
                self.hparams_with({name: value}, key=f"grid.{name}")
        for key in ("order", "free"):
            for name in getattr(self.search, key) or []:
                if name not in self.grid:
                    raise ValueError(f"search.{key}: {name!r} has no grid; grid has: {', '.join(self.grid)}")
        if not self.grid:
            raise ValueError(f"grid: empty; give a list of values for at least one of {', '.join(self.hparam_names())}")
        if not self.search_order():
            names = ", ".join(self.grid)
            raise ValueError(f"search: 'order' and 'free' leave nothing to search; name some of: {names}")
        for name, scale in self.all_scales().items():
            self._check_micro_batch(name, scale)
            steps = scale.steps(self.baseline.get("batch_size"))
            if warmup >= steps:
                raise ValueError(f"baseline.warmup ({warmup}) must be shorter than the {steps} steps of scale {name!r}")
        names = set(self.hparam_names())
        for name in self.optimizers:
            names.update(self.for_optimizer(name).hparam_names())
        for name in self.analysis.laws_for:
            if name not in names:
                allowed = ", ".join(sorted(names))
                raise ValueError(f"analysis.laws_for: unknown hyperparameter {name!r}; allowed: {allowed}")
        return self

    def _check_micro_batch(self, name: str, scale: Scale) -> None:
        """The micro-batch must divide every batch size this scale trains with (gradients accumulate)."""
        micro = scale.micro_batch_size or self.study.train.micro_batch_size
        if micro is None:
            return
        key = f"scales.{name}.micro_batch_size" if scale.micro_batch_size else "study.train.micro_batch_size"
        batches = {scale.batch_size, *(int(b) for b in self.grid.get("batch_size", []))}
        if self.baseline.get("batch_size"):
            batches.add(int(self.baseline["batch_size"]))
        for batch in sorted(batches):
            if batch % micro:
                raise ValueError(f"{key}: {micro} does not divide the batch size {batch} of scale {name!r}")

    def params_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))

    def all_scales(self) -> dict[str, Scale]:
        return {**self.scales, **self.law_scales}

    def phase_scales(self, phase: str) -> dict[str, Scale]:
        """The scales swept in one phase: `scales` ("phase1") or `law_scales` ("law")."""
        if phase not in ("phase1", "law"):
            raise ParamsError(f"phase {phase!r}: allowed: phase1 (every hyperparameter free), law (the sensitive ones)")
        return self.scales if phase == "phase1" else self.law_scales

    def first_scale(self, phase: str) -> str:
        """The scale a phase's sweep runs when none is named."""
        scales = self.phase_scales(phase)
        if not scales:
            key = "scales" if phase == "phase1" else "law_scales"
            raise ParamsError(f"{key}: empty; no scale to sweep in phase {phase!r}")
        return next(iter(scales))

    def scales_to_compare(self) -> list[str]:
        """The phase-1 scales the sensitivity analysis compares: it needs two (a single scale still sweeps)."""
        if len(self.scales) < 2:
            raise ParamsError(
                f"scales: the sensitivity analysis compares phase-1 scales and needs at least 2, got {len(self.scales)}"
            )
        return list(self.scales)

    def scale(self, name: str) -> Scale:
        scales = self.all_scales()
        if name not in scales:
            raise ParamsError(f"unknown scale {name!r}; allowed: {', '.join(scales)}")
        return scales[name]

    def hparam_names(self) -> list[str]:
        """Every hyperparameter of the study's optimizer, then `batch_size`."""
        return hparam_names_of(self.study.optimizer)

    def hparams_with(self, overrides: dict[str, Any], key: str = "hparams") -> Hparams:
        """The baseline with some hyperparameters replaced, the rest at the optimizer's defaults, validated
        against its declarations (raises ParamsError naming `key`, the optimizer and the hyperparameter)."""
        return resolve_hparams(self.study.optimizer, {**self.baseline, **overrides}, where=key)

    def for_optimizer(self, name: str | None) -> StudyParams:
        """The study of another optimizer named in `optimizers` (None or "": this study): the same scales,
        data, seeds, search settings and run store, with that optimizer's baseline, grid and order."""
        if not name:
            return self
        if name not in self.optimizers:
            named = ", ".join(self.optimizers) or "none"
            raise ParamsError(f"optimizers: no optimizer {name!r}; params name: {named}")
        other = self.optimizers[name]
        raw = self.model_dump(mode="json", exclude={"optimizers"})
        raw["study"]["optimizer"] = other.optimizer or name
        raw["baseline"], raw["grid"] = other.baseline, other.grid
        raw["search"].update(order=other.order, free=other.free)
        names = hparam_names_of(raw["study"]["optimizer"])  # laws asked for names this optimizer has
        raw["analysis"]["laws_for"] = [h for h in self.analysis.laws_for if h in names]
        return validate_params(raw, source=f"optimizers.{name}")

    def scale_space(self, name: str) -> tuple[dict[str, float | int], dict[str, list[float | int]]]:
        """The baseline and grid at one scale, with lr moved from the reference width by the transfer rule.

        Everything downstream (run specs, the run store, results, analysis) sees these effective values.
        """
        factor = self.study.lr_transfer.factor(self.scale(name).width)
        baseline = self.hparams_with({}, key="baseline")
        grid = {h: list(values) for h, values in self.grid.items()}
        baseline["lr"] = round_sig(baseline["lr"] * factor)
        if "lr" in grid:
            grid["lr"] = [round_sig(v * factor) for v in grid["lr"]]
        integers = self.integer_hparams()
        for h in grid:
            if h in integers:
                grid[h] = [int(v) for v in grid[h]]
        return baseline, grid

    def integer_hparams(self) -> list[str]:
        """The hyperparameters that take whole numbers (warmup, batch_size, ...)."""
        declared = load_optimizer(self.study.optimizer).hparams
        return [h for h, hparam in declared.items() if hparam.integer] + list(OPTIONAL_HPARAMS)

    def coordinate_order(self) -> list[str]:
        """The one order in which coordinate descent visits hyperparameters: `search.order`, else every grid
        entry in the canonical order of `ALL_HPARAMS` (AdamW's names), then the others in the grid's order."""
        return self.search.order or [*(h for h in ALL_HPARAMS if h in self.grid),
                                     *(h for h in self.grid if h not in ALL_HPARAMS)]

    def search_order(self) -> list[str]:
        """The phase-1 coordinates: the coordinate order, restricted to `search.free` when given."""
        free = self.search.free
        return [h for h in self.coordinate_order() if free is None or h in free]


def hparam_names_of(optimizer: str) -> list[str]:
    """Every hyperparameter an optimizer plug-in declares, then `batch_size`."""
    return [*load_optimizer(optimizer, "study.optimizer").hparams, *OPTIONAL_HPARAMS]


def round_sig(value: float, digits: int = 6) -> float:
    """`value` to `digits` significant digits (so 1e-2 * 0.5 prints as 0.005, not 0.005000000000000001)."""
    return float(f"{value:.{digits}g}")


# --- loading ----------------------------------------------------------------------------------------------


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "missing":
        message = "missing required key"
    got = first.get("input")
    if first["type"] not in ("missing", "value_error") and not isinstance(got, dict):
        message += f" (got {got!r})"
    return f"{where}: {message}" if where else message


def validate_params(raw: dict[str, Any], source: str = "params") -> StudyParams:
    """Validate a params mapping; any problem becomes one `ParamsError` line naming `source` and the key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping with keys {', '.join(StudyParams.model_fields)}")
    try:
        return StudyParams(**raw)
    except ValidationError as error:
        raise ParamsError(f"{source}: {_first_error(error)}") from None
    except ValueError as error:
        raise ParamsError(f"{source}: {error}") from None


def read_params_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None


def apply_overrides(raw: dict[str, Any], assignments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply `key=value` assignments (values parsed as YAML).

    A bare hyperparameter name (`lr=3e-3`) overrides the run's hyperparameters and is returned separately;
    a dotted path (`study.seed=1`, `scales.a.tokens=100000`) edits the params mapping.
    """
    raw = copy.deepcopy(raw)
    hparams: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {assignment!r}: expected key=value")
        value = yaml.safe_load(text)
        if "." not in key:  # checked against the optimizer's declared names when the params are validated
            hparams[key] = value
            continue
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ParamsError(f"--set {key}: {part!r} is not a section of the params file")
            node = node[part]
        node[leaf] = value
    return raw, hparams


def load_params(path: str | Path, assignments: list[str] | None = None, optimizer: str | None = None) -> StudyParams:
    """Read, override and validate a params file; with `optimizer`, the study of that optimizer in
    `optimizers` (bare hyperparameter overrides then apply to its baseline)."""
    raw, hparams = apply_overrides(read_params_file(path), assignments or [])
    if hparams:
        entry = raw.get("optimizers", {}).get(optimizer) if optimizer else raw
        if not isinstance(entry, dict):
            raise ParamsError(f"{path}: optimizers: no optimizer {optimizer!r} to override {', '.join(hparams)} of")
        entry["baseline"] = {**entry.get("baseline", {}), **hparams}
    return validate_params(raw, source=str(path)).for_optimizer(optimizer)


def load_analysis_settings(path: str | Path) -> AnalysisSettings:
    """The analysis settings from a whole study params file or from a file holding only an `analysis:` mapping."""
    raw = read_params_file(path)
    if not isinstance(raw, dict) or "analysis" not in raw:
        raise ParamsError(f"{path}: expected an 'analysis:' mapping (alone, or in a whole study params file)")
    if set(raw) != {"analysis"}:
        return load_params(path).analysis
    try:
        return AnalysisSettings(**(raw["analysis"] or {}))
    except ValidationError as error:
        raise ParamsError(f"{path}: analysis.{_first_error(error)}") from None
    except TypeError:
        raise ParamsError(f"{path}: analysis: expected a mapping of settings") from None
