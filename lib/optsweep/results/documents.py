"""The results documents that cross stages and files, as pydantic models: written and read only through here.

Reading validates: a hand-edited, truncated or stale results file fails with one line naming the file and
the field (`ParamsError`), instead of a KeyError three modules later. Every document carries the
provenance of whatever command wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from ..jsonio import read_json, to_strict, write_json
from ..params.settings import ParamsError
from ..provenance import provenance
from ..runs.store import RunStatus

Number = float | int
# What a sweep was trained with: sweeps that feed one analysis must agree on these.
TRAINING_IDENTITY = ("data_hash", "trainer", "trainer_code")
Config = dict[str, Number]
# A sweep's scale as its run specs carry it: the name, the declared fields and every derived value (n_params,
# tokens, steps, ...; `optsweep.params.sections.Scale.derived`).
ScaleRecord = dict[str, str | int | float | None]


class Document(BaseModel):
    """Base of every results document: unknown fields are kept (newer writers), missing ones are errors."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Provenance(Document):
    """What produced a document: code version, params hash, time, and what the writer adds (data, trainer)."""

    code_version: str
    params_hash: str | None
    created: str

    def recorded(self, part: str) -> Any:
        """What the writer added under `part` (e.g. `data_hash`, `trainer`), None when it did not."""
        return (self.model_extra or {}).get(part)


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


Verdict = Literal["sensitive", "insensitive", "inconclusive"]


class ScaleOptimum(Document):
    """A hyperparameter's optimum at one scale: the best grid value and the refined one, with its standard error
    on the natural axis; `edge` ("above" / "below") marks a best at the grid's end, censored at `bound`."""

    grid_value: float
    refined: float
    estimate: str  # "fitted" (a local quadratic's vertex) or "measured" (the best run)
    stderr: float | None
    at_edge: bool
    edge: str | None
    bound: float | None
    loss: float | None


class HparamVerdict(Document):
    """One hyperparameter's sensitivity verdict, with the margin and the noise it was judged against (and, as
    written by `analyze_sensitivity`, its evidence and tests), and its optimum per scale."""

    verdict: Verdict
    sensitive: bool
    loss_sensitive: bool
    common_value_costs: bool
    optimum_shifts: bool
    shift_cause: str | None
    margin: float | None
    required_margin: float | None
    reason: str
    optimum: dict[str, ScaleOptimum] = Field(default_factory=dict)  # per scale


class RecommendedConstant(Document):
    """A constant for a hyperparameter (moved to a width by its rule; none: the same at every width)."""

    value: StrictFloat | StrictInt | None  # a number as written: "0.1" is not one
    rule: str = "none"
    reference_width: int | None = None


class HypothesisAnswer(Document):
    hypothesis: str
    verdict: Literal["supported", "contradicted", "inconclusive"]
    evidence: dict[str, Any]


class ScaleNoise(Document):
    config_std: float | None  # the loss noise of one config at this scale
    difference_std: float | None  # of the difference between two configs


class MeasuredNoise(Document):
    """The loss noise the sensitivity analysis judged against: where it came from, the relative std of one
    config's loss (None: none measured) and the noise per scale; the estimates behind it as the analysis
    writes them."""

    source: str | None = None
    relative_std: float | None = None
    per_scale: dict[str, ScaleNoise] = Field(default_factory=dict)


class SensitivityResult(Document):
    """`results/sensitivity.json`: one verdict per hyperparameter, constants, hypotheses, noise, warnings."""

    hyperparameters: dict[str, HparamVerdict]
    sensitive: list[str]
    inconclusive: list[str]
    recommended: dict[str, RecommendedConstant]
    unjudged: list[str]
    hypotheses: list[HypothesisAnswer]
    warnings: list[str]
    provenance: Provenance
    noise: MeasuredNoise | None = None


class LawPhaseInputs(Document):
    """What the law phase reads of a `results/sensitivity.json`: the hyperparameters that move, those the
    analysis could not judge, and the constants for the rest (a full `SensitivityResult` is one)."""

    sensitive: list[str]
    unjudged: list[str] = []
    recommended: dict[str, RecommendedConstant]


Interval = tuple[float | None, float | None]  # None: not finite (an upper bound: unbounded)


class LawCoefficient(Document):
    estimate: float
    stderr: float | None = None
    ci95: Interval


class LawPoint(Document):
    """One scale's optimum a law was fitted on (`used`: not left out), and its residual on the law's axis."""

    scale: str
    n_params: float
    tokens: float
    width: int
    value: float
    at_edge: bool
    edge: str | None
    bound: float | None
    estimate: str
    stderr: float | None
    used: bool
    residual: float | None


class HparamLaw(Document):
    """One hyperparameter's fitted power law in (N, D): its form, coefficients with 95% intervals, fit quality
    and points (the rest -- covariance, residuals, the forms compared, the summary -- as the fit writes them)."""

    form: str
    kind: str
    coefficients: dict[str, LawCoefficient]
    r2: float | None
    n_points: int
    points: list[LawPoint]


class PredictionInputs(Document):
    """What `optsweep predict` reads of a `results/scaling_law.json`: the fitted laws and the constants (a full
    `ScalingLaws` is one)."""

    laws: dict[str, HparamLaw]
    constants: dict[str, RecommendedConstant]


class ScalingLaws(Document):
    """`results/scaling_law.json`: a law per sensitive hyperparameter, constants for the rest, the loss law."""

    laws: dict[str, HparamLaw]
    unfitted: dict[str, str]  # hyperparameter -> why no law was fitted
    skipped: dict[str, str]
    constants: dict[str, RecommendedConstant]
    loss_law: dict[str, Any]
    warnings: list[str]
    provenance: Provenance


DocumentType = TypeVar("DocumentType", bound=Document)


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"field {where or '(document)'}: {first['msg']}"


def read_document(path: Path | str, kind: type[DocumentType]) -> DocumentType:
    """Read and validate a results file; any problem is one `ParamsError` line naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: results file not found")
    try:
        raw = read_json(path)
    except ValueError as error:
        raise ParamsError(f"{path}: not valid JSON ({error})") from None
    try:
        return kind.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(f"{path}: not a valid {kind.__name__}: {_first_problem(error)}") from None


def as_json(document: Document) -> dict[str, Any]:
    """The document as the plain JSON mapping its file holds (for code that reads mappings)."""
    return document.model_dump(mode="json", by_alias=True)


def write_document(path: Path | str, document: Document) -> Path:
    """Write a document as strict JSON, atomically."""
    return write_json(Path(path), as_json(document))


def stamped(kind: type[DocumentType], content: dict[str, Any], params_hash: str | None,
            **origin: Any) -> DocumentType:
    """An analysis result as a validated document carrying the provenance of whatever wrote it."""
    return kind.model_validate(to_strict({**content, "provenance": provenance(params_hash, **origin)}))


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
