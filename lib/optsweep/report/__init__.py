"""The study's results as tables, sentences and figures for the notebooks and the HTML report; everything is
read from results/.

    study       one optimizer's study: its paths, params and sweeps, and the tables of its sweeps
    tables      the sensitivity analysis and the scaling laws as tables
    answer      the paragraph at the top of the report, and what would decide an inconclusive verdict
    comparison  other optimizers against the tuned AdamW
    speedup_tables  a speedup result as tables
    plots       the figures (seaborn)
    notebook    running a study notebook through papermill and jupytext
"""

from .answer import (
    LONGER_RUNS,
    MORE_OR_LONGER_RUNS,
    WIDER_GRID,
    DecisionCosts,
    RunCost,
    answer_paragraph,
    constant_text,
    decision_costs,
    law_text,
    noise_sentence,
    what_would_decide,
)
from .comparison import (
    SCALE_ROW,
    Comparison,
    interval_text,
    load_comparison,
    optimizer_pages,
    reference_curve_lines,
    reference_curves_frame,
    speedup_frame,
    speedup_points,
    speedup_verdicts_frame,
    transfer_frame,
    tuned_hparams_frame,
    tuned_loss_frame,
    tuned_points,
)
from .study import (
    BRIEF_REPORTED,
    RESULTS,
    compute_summary,
    load_sweeps,
    optimizer_study,
    provenance_frame,
    recommended_frame,
    slices_frame,
    study_sweeps,
    sweep_summary_frame,
)
from .tables import (
    EVIDENCE_LEFT_OUT,
    analysis_warnings,
    evidence_text,
    grid_edges,
    hypotheses_frame,
    law_curves,
    law_forms_frame,
    noise_frame,
    reasons_details,
    sensitivity_frame,
    short_reason,
    styled,
    verdict_clause,
)

__all__ = [
    "BRIEF_REPORTED",
    "Comparison",
    "DecisionCosts",
    "EVIDENCE_LEFT_OUT",
    "LONGER_RUNS",
    "MORE_OR_LONGER_RUNS",
    "RESULTS",
    "RunCost",
    "SCALE_ROW",
    "WIDER_GRID",
    "analysis_warnings",
    "answer_paragraph",
    "compute_summary",
    "constant_text",
    "decision_costs",
    "evidence_text",
    "grid_edges",
    "hypotheses_frame",
    "interval_text",
    "law_curves",
    "law_forms_frame",
    "law_text",
    "load_comparison",
    "load_sweeps",
    "noise_frame",
    "noise_sentence",
    "optimizer_pages",
    "optimizer_study",
    "provenance_frame",
    "reasons_details",
    "recommended_frame",
    "reference_curve_lines",
    "reference_curves_frame",
    "sensitivity_frame",
    "short_reason",
    "slices_frame",
    "speedup_frame",
    "speedup_points",
    "speedup_verdicts_frame",
    "study_sweeps",
    "styled",
    "sweep_summary_frame",
    "transfer_frame",
    "tuned_hparams_frame",
    "tuned_loss_frame",
    "tuned_points",
    "verdict_clause",
    "what_would_decide",
]
