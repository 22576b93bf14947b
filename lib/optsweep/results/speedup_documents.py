"""`results/speedup.json` as pydantic documents: another optimizer's speedup over a tuned AdamW, AdamW's loss
curves, the verdicts on the talk's claims, the transfer gaps and the laws across model sizes.

Computed by `optsweep.analysis.speedup` (and `speedup_sweeps`, `speedup_laws`); written and read, like every
results document, with `write_document` / `read_document` (validated, one-line errors naming the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from .base import Document, Interval, Provenance, read_document, write_document

__all__ = ["Estimate", "Interval", "LossCurve", "SharedLaw", "SizeLaw", "SizePrediction", "Speedup", "SpeedupResult",
           "TransferGap", "TuningBudget", "Unjudged", "Verdict", "tokens_to_reach"]


def tokens_to_reach(loss: np.ndarray | float, a: np.ndarray | float, b: np.ndarray | float,
                    c: np.ndarray | float) -> np.ndarray:
    """D_eff of L(D) = a * D^-b + c: the data at which the curve reaches `loss` (inf at or below c)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a loss near c needs unbounded data
        gap = np.asarray(loss, dtype=float) - c
        return np.where(gap > 0, (np.maximum(gap, 1e-300) / a) ** (-1.0 / np.asarray(b, dtype=float)), np.inf)


class LossCurve(Document):
    """AdamW's tuned loss against data at one model size: L(D) = a * D^-b + c, with bootstrap intervals."""

    n_params: float
    tokens: list[float]  # the data scales fitted
    losses: list[float]  # AdamW's tuned loss at each
    a: float
    b: float
    c: float
    a_interval: Interval
    b_interval: Interval
    c_interval: Interval
    residual_se: float | None  # None with exactly 3 data scales (no degrees of freedom left)
    noise: float  # the loss noise of one run that the bootstrap used here
    noise_source: str | None = None  # where `noise` came from: stated, measured (how), the floor, fit residuals
    scales: list[str] = Field(default_factory=list)  # the reference's scales fitted, in order of `tokens`
    left_out: list[str] = Field(default_factory=list)  # the reference's scales at this size not fitted, and why
    beyond_others: list[str] = Field(default_factory=list)  # fitted scales with more data than any other's run here

    def tokens_to_reach(self, loss: float) -> float:
        """D_eff: the data at which this curve reaches `loss` (inf when `loss` is at or below c)."""
        return float(tokens_to_reach(loss, self.a, self.b, self.c))


class Speedup(Document):
    """One optimizer at one scale against AdamW's curve at its model size."""

    optimizer: str
    scale: str
    n_params: float
    tokens: float  # D: the data the optimizer trained on
    loss: float  # its tuned loss
    reference_loss: float | None  # AdamW's tuned loss at the same scale, when it ran there
    effective_tokens: float | None  # D_eff (None: below AdamW's asymptote)
    speedup: float | None  # D_eff / D
    interval: Interval
    extrapolated: bool  # D_eff outside AdamW's fitted data range
    noise: float | None = None  # the loss noise of one run of this optimizer the bootstrap used
    noise_source: str | None = None  # where `noise` came from
    extrapolation: str | None = None  # when `extrapolated`: how far D_eff lies outside the fitted data
    # Cost per token from the runs' measured results (median over the scale's finished runs; None: not recorded)
    flops_per_token: float | None = None
    reference_flops_per_token: float | None = None  # the reference's at the same scale
    tokens_per_s: float | None = None
    reference_tokens_per_s: float | None = None
    # (reference FLOPs per token x D_eff) / (FLOPs per token x D), and the same with seconds per token
    compute_speedup: float | None = None
    compute_interval: Interval = (None, None)
    wall_clock_speedup: float | None = None
    wall_clock_interval: Interval = (None, None)


class Verdict(Document):
    """One of the talk's claims about one optimizer, judged."""

    hypothesis: str
    optimizer: str
    verdict: str  # supported / contradicted / inconclusive
    why: str
    margin: float | None  # how far the deciding interval clears the claim's boundary
    estimate: float | None
    interval: Interval
    noise: float | None = None  # the loss noise of one run it was judged against (where not an interval's)
    scale: str | None = None  # the scale the estimate is from


class Unjudged(Document):
    """One of the talk's claims that could not be judged for an optimizer, and why."""

    hypothesis: str
    optimizer: str
    why: str


class TuningBudget(Document):
    """What tuning one optimizer at one scale cost (a sweep's `compute`, or a runs table's rows) and what it found."""

    optimizer: str
    scale: str
    phase: str | None  # None: from a runs table
    runs: int
    flops: float | None  # None: the runs table has no `flops` column
    best_loss: float | None


class TransferGap(Document):
    """The reference's optimum at one scale carried to another optimizer (a sweep's `transfer`), against
    that optimizer's own tuned loss there."""

    optimizer: str
    scale: str
    phase: str
    n_params: float
    carried: list[str]  # the hyperparameter names taken from the reference's optimum
    status: str  # of the carried config's run
    loss: float | None  # the carried config's
    tuned_loss: float | None  # the optimizer's own best at this scale
    gap: float | None  # loss - tuned_loss (None: the carried config diverged)
    noise: float  # the loss noise of one run of this optimizer at its tuned loss (measured, or the floor)
    noise_source: str | None = None


class Estimate(Document):
    estimate: float
    interval: Interval


class SizePrediction(Document):
    n_params: float
    chinchilla: float
    tokens: float
    speedup: float
    interval: Interval
    extrapolated: bool  # the size or the data ratio lies outside the fitted points


class SizeLaw(Document):
    """One optimizer's speedup against model size, and its predictions at the targets."""

    optimizer: str
    form: str
    coefficients: dict[str, Estimate]
    per_doubling: Estimate  # the speedup's factor per doubling of N, 2^slope
    scales: list[str]  # the speedups fitted
    dof: int
    lack_of_fit: float  # chi^2 / dof of the weighted fit; the covariance is scaled by it when above 1
    predictions: list[SizePrediction]


class SharedLaw(Document):
    """L = E + A (rho_N N)^-alpha + B (rho_D D)^-beta over every optimizer's tuned losses."""

    form: str
    reference: str
    E: Estimate
    A: Estimate
    alpha: Estimate
    B: Estimate
    beta: Estimate
    rho_N: dict[str, Estimate]  # per optimizer (the reference's is 1 by definition)
    rho_D: dict[str, Estimate]
    points: int
    residual_se: float
    lack_of_fit: float  # chi^2 / dof against each point's noise


class SpeedupResult(Document):
    """`results/speedup.json`: every other optimizer's speedup over the reference, per scale, and the claims."""

    reference: str
    level: float  # of every interval
    noise_floor: float
    stated_noise: float | None = None  # analysis.speedup_noise: when set, every run's noise (else measured / floor)
    bootstrap: str
    replicates: int
    curves: list[LossCurve]
    speedups: list[Speedup]
    skipped: list[str]  # model sizes (or optimizers) left out, and why
    hypotheses: list[Verdict]
    unjudged: list[Unjudged] = Field(default_factory=list)  # claims not judged for an optimizer, and why
    budgets: list[TuningBudget] = Field(default_factory=list)  # per optimizer and scale
    transfers: list[TransferGap] = Field(default_factory=list)  # from sweep results only
    size_laws: list[SizeLaw] = Field(default_factory=list)  # speedup against model size, per optimizer
    shared_law: SharedLaw | None = None  # one loss law, per-optimizer rho_N and rho_D
    provenance: Provenance | None = None  # what wrote the file (`stamped`)

    def stamped(self, params_hash: str | None, **origin: Any) -> SpeedupResult:
        """The result carrying the provenance of whatever command writes it (and what it was computed from)."""
        return self.model_copy(update={"provenance": Provenance.now(params_hash, **origin)})

    def write(self, path: str | Path) -> Path:
        """`write_document` of this result."""
        return write_document(path, self)

    @classmethod
    def read(cls, path: str | Path) -> SpeedupResult:
        """`read_document` of a speedup file: validated, any problem one `ParamsError` naming file and field."""
        return read_document(path, cls)
