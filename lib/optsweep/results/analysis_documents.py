"""The analyses' documents: `results/sensitivity.json` (one verdict per hyperparameter, the constants, the
brief's hypotheses, the noise) and `results/scaling_law.json` (the laws, the constants), and what the law phase
and `optsweep predict` read of them. `optsweep.analysis` computes them; they are written and read with
`write_document` / `read_document`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictFloat, StrictInt

from .base import Document, Interval, Provenance

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


class OriginalRule(Document):
    """The original study's rule on one hyperparameter: `stable` when one grid value is near-best at every
    scale; `why_differs` says why the verdict differs, where it does."""

    stable: bool
    why_differs: str | None = None


class VerdictEvidence(Document):
    """The numbers behind a verdict (as `analyze_sensitivity` writes them); `at_edge`: the scales whose optimum
    lies at the grid's edge; `width_rule`: the rule the shift test chose (the law phase reports lr's beside its
    own fit of lr against width)."""

    at_edge: list[str] = Field(default_factory=list)
    width_rule: str | None = None


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
    noise: float | None = None  # of a difference between two configs, at the deciding scale
    p_holm: float | None = None  # the shift test's p-value, Holm-corrected over the hyperparameters
    optimum: dict[str, ScaleOptimum] = Field(default_factory=dict)  # per scale
    original_rule: OriginalRule | None = None
    evidence: VerdictEvidence = Field(default_factory=VerdictEvidence)


class RecommendedConstant(Document):
    """A constant for a hyperparameter (moved to a width by its rule; none: the same at every width)."""

    value: StrictFloat | StrictInt | None  # a number as written: "0.1" is not one
    rule: str = "none"
    reference_width: int | None = None


class HypothesisAnswer(Document):
    hypothesis: str
    verdict: Literal["supported", "contradicted", "inconclusive"]
    evidence: dict[str, Any]  # "why" and the numbers behind it, as each hypothesis's test writes them
    sensitivity_verdict: str | None = None  # the verdict on the hyperparameter it is about


class ScaleNoise(Document):
    config_std: float | None  # the loss noise of one config at this scale
    difference_std: float | None  # of the difference between two configs


class MeasuredNoise(Document):
    """The loss noise the sensitivity analysis judged against: where it came from, the relative std of one
    config's loss (None: none measured) and the noise per scale; the estimates behind it as the analysis
    writes them."""

    source: str | None = None
    relative_std: float | None = None
    dof: int | float | None = None  # degrees of freedom of the deciding estimate
    estimates: dict[str, dict[str, Any] | None] = Field(default_factory=dict)  # per source, as measured
    per_scale: dict[str, ScaleNoise] = Field(default_factory=dict)


class ScaleSummary(Document):
    """A phase-1 scale as the sensitivity analysis saw it."""

    n_params: int
    tokens: int
    width: int
    best_loss: float
    runs: int
    blown_up: int  # runs the divergence rule marked diverged


class PerScale(Document):
    per_scale: dict[str, int | float]  # a number per scale (a count stays a whole number)


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
    threshold: PerScale  # the loss that counts as mattering at each scale (and how it was set)
    blown_up: PerScale  # runs marked diverged per scale (and the rule's rise)
    scales: dict[str, ScaleSummary]


class LawPhaseInputs(Document):
    """What the law phase reads of a `results/sensitivity.json`: the hyperparameters that move, those the
    analysis could not judge, and the constants for the rest (a full `SensitivityResult` is one)."""

    sensitive: list[str]
    unjudged: list[str] = []
    recommended: dict[str, RecommendedConstant]


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


class LawForm(Document):
    form: str
    loo_rmse: float | None


class HparamLaw(Document):
    """One hyperparameter's fitted power law in (N, D): its form, coefficients with 95% intervals and what a
    prediction interval needs of the fit, fit quality and points (the rest -- residuals, collinearity, the
    method -- as the fit writes them)."""

    form: str
    kind: str
    coefficients: dict[str, LawCoefficient]
    covariance: list[list[float]]  # of the coefficients, in their order
    residual_std: float | None  # of an optimum of average standard error (None: not finite)
    df_resid: int | None  # for the t quantile (None: a likelihood fit, normal quantile)
    r2: float | None
    n_points: int
    points: list[LawPoint]
    loo_rmse: float | None  # leave-one-out RMSE on the law's (log) axis; None with too few points
    forms: dict[str, LawForm]  # every form fitted, by kind (`kind`: the one chosen)
    note: str
    summary: str  # statsmodels' summary of the chosen fit
    asked: bool = False  # fitted because analysis.laws_for asks for it, not because it is sensitive


class PredictionInputs(Document):
    """What `optsweep predict` reads of a `results/scaling_law.json`: the fitted laws, the constants and why
    the rest have no law (a full `ScalingLaws` is one)."""

    laws: dict[str, HparamLaw]
    constants: dict[str, RecommendedConstant]
    unfitted: dict[str, str] = Field(default_factory=dict)


class ScalingLaws(Document):
    """`results/scaling_law.json`: a law per sensitive hyperparameter, constants for the rest, the loss law."""

    laws: dict[str, HparamLaw]
    unfitted: dict[str, str]  # hyperparameter -> why no law was fitted
    skipped: dict[str, str]
    constants: dict[str, RecommendedConstant]
    loss_law: dict[str, Any]  # the loss law's form and coefficients, or why it was rejected (as fitted)
    warnings: list[str]
    provenance: Provenance
    lr_width: dict[str, Any] | None = None  # lr* against width beside the sensitivity's width rule (as fitted)
