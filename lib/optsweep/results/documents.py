"""The results documents that cross stages and files, as pydantic models: written and read only through here.

Reading validates: a hand-edited, truncated or stale results file fails with one line naming the file and
the field (`ParamsError`), instead of a KeyError three modules later. Every document carries the
provenance of whatever command wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from ..jsonio import read_json, to_strict, write_json
from ..params.settings import ParamsError
from ..provenance import provenance
from ..runs.store import RunStatus

Number = float | int
# What a sweep was trained with: sweeps that feed one analysis must agree on these.
TRAINING_IDENTITY = ("data_hash", "trainer", "trainer_code")
Config = dict[str, Number]


class Document(BaseModel):
    """Base of every results document: unknown fields are kept (newer writers), missing ones are errors."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Provenance(Document):
    """What produced a document: code version, params hash, time, and what the writer adds (data, trainer)."""

    code_version: str
    params_hash: str | None
    created: str


class SweptRun(Document):
    """One evaluated config of a sweep, as the sweep result lists it."""

    key: str
    hparams: Config
    seed: int
    loss: float | None
    status: RunStatus
    reason: str | None = None
    result: dict[str, Any] | None = None


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


class SeedNoise(Document):
    seeds: list[int]
    configs: list[dict[str, Any]]
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

    scale: dict[str, Any]
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
    near_best: list[dict[str, Any]]
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


Verdict = Literal["sensitive", "insensitive", "inconclusive"]


class HparamVerdict(Document):
    """One hyperparameter's sensitivity verdict, with the margin and the noise it was judged against."""

    verdict: Verdict
    sensitive: bool
    loss_sensitive: bool
    common_value_costs: bool
    optimum_shifts: bool
    shift_cause: str | None
    margin: float | None
    required_margin: float | None
    reason: str


class RecommendedConstant(Document):
    """A constant for a hyperparameter (moved to a width by its rule; none: the same at every width)."""

    value: StrictFloat | StrictInt | None  # a number as written: "0.1" is not one
    rule: str = "none"
    reference_width: int | None = None


class HypothesisAnswer(Document):
    hypothesis: str
    verdict: Literal["supported", "contradicted", "inconclusive"]
    evidence: dict[str, Any]


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


class LawPhaseInputs(Document):
    """What the law phase reads of a `results/sensitivity.json`: the hyperparameters that move, those the
    analysis could not judge, and the constants for the rest (a full `SensitivityResult` is one)."""

    sensitive: list[str]
    unjudged: list[str] = []
    recommended: dict[str, RecommendedConstant]


class ScalingLaws(Document):
    """`results/scaling_law.json`: a law per sensitive hyperparameter, constants for the rest, the loss law."""

    laws: dict[str, dict[str, Any]]
    unfitted: dict[str, Any]
    skipped: dict[str, Any]
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


def sweeps_origin(sweeps: list[dict[str, Any]]) -> dict[str, Any]:
    """What the sweeps an analysis rests on were trained with (they agree: see `require_one_identity`)."""
    first = sweeps[0]["provenance"] if sweeps else {}
    return {"sweeps": [sweep["scale"]["name"] for sweep in sweeps],
            **{part: first.get(part) for part in TRAINING_IDENTITY}}


def require_one_identity(sweeps: list[dict[str, Any]]) -> None:
    """Sweeps that feed one analysis must have trained on the same data with the same training code."""
    for part in TRAINING_IDENTITY:
        seen: dict[Any, list[str]] = {}
        for sweep in sweeps:
            seen.setdefault(sweep["provenance"].get(part), []).append(sweep["scale"]["name"])
        if len(seen) > 1:
            groups = "; ".join(f"{', '.join(names)}: {value}" for value, names in seen.items())
            raise ParamsError(f"sweeps disagree on {part} ({groups}); re-run the stale scales' sweeps")
