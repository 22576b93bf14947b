"""The sweep results, `results/sweeps/<scale>.json` and `results/law_sweeps/<scale>.json`: one coordinate
descent each (`optsweep.search` writes them), and what the analyses read of them."""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import ConfigDict, Field

from ..params.settings import ParamsError
from ..runs.store import RunStatus
from .base import Document, Provenance, as_json

Number = float | int
# What a sweep was trained with: sweeps that feed one analysis must agree on these.
TRAINING_IDENTITY = ("data_hash", "trainer", "trainer_code")
Config = dict[str, Number]
# A sweep's scale as its run specs carry it: the name, the declared fields and every derived value (n_params,
# tokens, steps, ...; `optsweep.params.sections.Scale.derived`).
ScaleRecord = dict[str, str | int | float | None]


class SweptRun(Document):
    """One evaluated config of a sweep, as the sweep result lists it."""

    key: str
    hparams: Config
    seed: int
    loss: float | None
    status: RunStatus
    reason: str | None = None
    result: dict[str, Any] | None = None


class NearBestRun(Document):
    """A run on the sweep's seed within the tolerance of the best."""

    hparams: Config
    loss: float


class SlicePoint(Document):
    value: Number
    loss: float | None
    status: RunStatus


class TrajectoryStep(Document):
    """The incumbent after one coordinate step (or one neighbourhood, for that stop rule)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    pass_number: int = Field(alias="pass")
    hparam: str
    baseline: Config
    loss: float | None


class GridExtension(Document):
    """A value added past a grid edge because the optimum sat on that edge (`search.extend_edges`)."""

    hparam: str
    end: Literal["low", "high"]
    value: Number
    edge: Number
    edge_loss: float | None


class FailedRun(Document):
    key: str
    hparams: Config
    seed: int
    error: str | None


class SeedConfig(Document):
    """One config of the seed-noise measurement and its loss on each seed (None: that run did not finish)."""

    hparams: Config
    losses: list[float | None]


class SeedNoise(Document):
    seeds: list[int]
    configs: list[SeedConfig]
    std: float | None


class Compute(Document):
    runs_planned: int
    runs_trained: int
    runs_reused: int
    runs_speculative_unused: int = 0  # trained ahead of the search, then not needed (still stored)
    tokens: int
    flops: float
    wall_s: float


def tolerance_margin(tolerance: float, kind: Literal["absolute", "relative"], reference: float) -> float:
    """The smallest improvement on `reference` that counts: `tolerance` itself, or that fraction of it."""
    return tolerance if kind == "absolute" else tolerance * abs(reference)


def beats_under_common_seeds(challenger: dict[int, float], incumbent: dict[int, float], tolerance: float,
                             kind: Literal["absolute", "relative"]) -> bool:
    """Whether a config's losses by seed beat another's by more than the tolerance under common random
    numbers: the mean over the seeds both finished on (never, with no seed in common)."""
    common = [seed for seed in challenger if seed in incumbent]
    if not common:
        return False
    ours = sum(challenger[seed] for seed in common) / len(common)
    theirs = sum(incumbent[seed] for seed in common) / len(common)
    return ours < theirs - tolerance_margin(tolerance, kind, theirs)


class TransferredOptimum(Document):
    """The reference optimizer's (AdamW's) best at the same scale, carried to this optimizer where the names
    match (the rest at this sweep's best) and trained: does an optimum transfer between optimizers?"""

    source: str  # the optimizer whose optimum was carried
    carried: list[str]  # the hyperparameter names taken from it
    hparams: Config
    loss: float | None
    status: RunStatus
    tuned_loss: float | None  # this sweep's best loss, for comparison


class SweepResult(Document):
    """`results/sweeps/<scale>.json` and `results/law_sweeps/<scale>.json`: one coordinate descent
    (another optimizer's under `results/optimizers/<name>/`)."""

    scale: ScaleRecord
    optimizer: str = "adamw"  # the plug-in name (optsweep.optimizers)
    axes: dict[str, str] = Field(default_factory=dict)  # each hyperparameter's natural axis, as declared
    phase: Literal["phase1", "law"]
    free: list[str]
    fixed: Config
    grid: dict[str, list[Number]]
    grid_extensions: list[GridExtension]
    order: list[str]
    baseline: Config
    best: Config
    best_loss: float | None
    near_best: list[NearBestRun]
    passes: int
    converged: bool
    why_not_converged: str | None = None  # one sentence whenever `converged` is false (absent before it was kept)
    stop_rule: Literal["pass", "neighbourhood"]
    tolerance: float
    tolerance_kind: Literal["absolute", "relative"]
    trajectory: list[TrajectoryStep]
    runs: list[SweptRun]
    slices: dict[str, list[SlicePoint]]
    noise: SeedNoise | None
    failed: list[FailedRun]
    compute: Compute
    transfer: TransferredOptimum | None = None
    provenance: Provenance

    def runs_beating_best(self) -> list[SweptRun]:
        """The sweep's runs on its own seed that beat the reported best under common random numbers
        (`beats_under_common_seeds`): none, for a search that ended on the lowest of its runs."""
        def finished(hparams: Config) -> dict[int, float]:
            return {run.seed: run.loss for run in self.runs
                    if run.hparams == hparams and run.status == RunStatus.OK and run.loss is not None}

        best, sweep_seed = finished(self.best), self.runs[0].seed if self.runs else None  # asked for first
        return [run for run in self.runs
                if run.seed == sweep_seed and run.seed in finished(run.hparams)
                and beats_under_common_seeds(finished(run.hparams), best, self.tolerance, self.tolerance_kind)]

    def same_search(self, other: SweepResult) -> bool:
        """Whether two results say the same, ignoring when and by which invocation they were made (and the
        hash of the whole params file: an edit to another scale does not change this scale's result)."""
        def stable(result: SweepResult) -> dict[str, Any]:
            data = as_json(result)
            for volatile in ("wall_s", "runs_trained", "runs_reused", "runs_speculative_unused"):
                data["compute"].pop(volatile, None)
            for volatile in ("created", "code_version", "params_hash"):
                data["provenance"].pop(volatile, None)
            return data

        return stable(self) == stable(other)


class SweepRuns(Document):
    """What an analysis reads of a sweep result: its scale, phase, declared axes and runs (a full
    `SweepResult` has them all; a sweep made elsewhere needs only these)."""

    scale: ScaleRecord
    phase: Literal["phase1", "law"] = "phase1"
    axes: dict[str, str] = Field(default_factory=dict)
    runs: list[SweptRun]


def sweeps_origin(sweeps: Sequence[SweepResult]) -> dict[str, Any]:
    """What the sweeps an analysis rests on were trained with (they agree: see `require_one_identity`), as
    the provenance of the analysis's document records it."""
    first = sweeps[0].provenance if sweeps else None
    return {"sweeps": [sweep.scale["name"] for sweep in sweeps],
            **{part: first.recorded(part) if first else None for part in TRAINING_IDENTITY}}


def require_one_identity(sweeps: Sequence[SweepResult], labels: Sequence[str] | None = None) -> None:
    """Sweeps that feed one analysis must have trained on the same data with the same training code (a
    one-line `ParamsError` naming the sweeps, by scale or by `labels`, otherwise)."""
    labels = labels or [str(sweep.scale["name"]) for sweep in sweeps]
    for part in TRAINING_IDENTITY:
        seen: dict[Any, list[str]] = {}
        for sweep, label in zip(sweeps, labels):
            seen.setdefault(sweep.provenance.recorded(part), []).append(label)
        if len(seen) > 1:
            groups = "; ".join(f"{', '.join(names)}: {value}" for value, names in seen.items())
            raise ParamsError(f"sweeps disagree on {part} ({groups}); re-run the stale scales' sweeps")
