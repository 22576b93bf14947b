"""The results documents that cross stages and files, as pydantic models: written and read only through here.

    base                one `Document` base, `read_document` (validated: one line naming the file and the
                        field) and `write_document`, `stamped` with the writer's provenance
    sweep_documents     `SweepResult` (results/sweeps/, results/law_sweeps/) and what analyses read of it
    analysis_documents  `SensitivityResult`, `ScalingLaws`, and what the law phase and `predict` read of them
    speedup_documents   `SpeedupResult` (results/speedup.json)

Reading validates: a hand-edited, truncated or stale results file fails with one line naming the file and
the field (`ParamsError`), instead of a KeyError three modules later. Every document carries the
provenance of whatever command wrote it.
"""

from __future__ import annotations

from .analysis_documents import (
    HparamLaw,
    HparamVerdict,
    HypothesisAnswer,
    LawCoefficient,
    LawForm,
    LawPhaseInputs,
    LawPoint,
    MeasuredNoise,
    OriginalRule,
    PerScale,
    PredictionInputs,
    RecommendedConstant,
    ScaleNoise,
    ScaleOptimum,
    ScaleSummary,
    ScalingLaws,
    SensitivityResult,
    Verdict,
    VerdictEvidence,
)
from .base import (
    Document,
    DocumentType,
    Interval,
    Provenance,
    as_json,
    read_document,
    stamped,
    write_document,
)
from .sweep_documents import (
    TRAINING_IDENTITY,
    Compute,
    Config,
    FailedRun,
    GridExtension,
    NearBestRun,
    Number,
    ScaleRecord,
    SeedConfig,
    SeedNoise,
    SlicePoint,
    SweepResult,
    SweepRuns,
    SweptRun,
    TrajectoryStep,
    TransferredOptimum,
    beats_under_common_seeds,
    require_one_identity,
    sweeps_origin,
    tolerance_margin,
)

__all__ = [
    "Compute",
    "Config",
    "Document",
    "DocumentType",
    "FailedRun",
    "GridExtension",
    "HparamLaw",
    "HparamVerdict",
    "HypothesisAnswer",
    "Interval",
    "LawCoefficient",
    "LawForm",
    "LawPhaseInputs",
    "LawPoint",
    "MeasuredNoise",
    "NearBestRun",
    "Number",
    "OriginalRule",
    "PerScale",
    "PredictionInputs",
    "Provenance",
    "RecommendedConstant",
    "ScaleNoise",
    "ScaleOptimum",
    "ScaleRecord",
    "ScaleSummary",
    "ScalingLaws",
    "SeedConfig",
    "SeedNoise",
    "SensitivityResult",
    "SlicePoint",
    "SweepResult",
    "SweepRuns",
    "SweptRun",
    "TRAINING_IDENTITY",
    "TrajectoryStep",
    "TransferredOptimum",
    "Verdict",
    "VerdictEvidence",
    "as_json",
    "beats_under_common_seeds",
    "read_document",
    "require_one_identity",
    "stamped",
    "sweeps_origin",
    "tolerance_margin",
    "write_document",
]
