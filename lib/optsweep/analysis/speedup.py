"""Speedup of an optimizer over a tuned AdamW: how much more data AdamW needs to reach the same loss.

    result = compute_speedup(table)            # a runs table with an `optimizer` column
    result = speedup_from_sweeps({"adamw": sweeps, "muon": muon_sweeps})   # or from sweep results
    result.write("results/speedup.json")

Per model size (rows sharing `n_params`) AdamW's tuned loss -- its best loss at each data scale -- is fitted
as L(D) = a * D^-b + c over >= 3 data scales. For every other optimizer and scale, D_eff is the data AdamW
would need to reach that optimizer's tuned loss, D_eff = ((L - c) / a)^(-1/b), and speedup = D_eff / D.
A D_eff outside AdamW's fitted data range is flagged `extrapolated`; a loss at or below c, which AdamW
never reaches, has no D_eff (None: an unbounded speedup).

Intervals come from a parametric bootstrap with Gaussian residuals: each replicate adds independent N(0, noise^2) to
AdamW's fitted losses and to the challenger's tuned loss, refits L(D) and recomputes D_eff. `noise`, the
loss noise of one run, is `stated_noise` (analysis.speedup_noise) when set, else the noise the optimizer's own
sensitivity analysis measured (`relative_noise`: the relative std of one config's loss, from seeds and the
surface scatter, times the loss), at least a floor (default 3e-3, the original study's near-best tolerance);
for AdamW's curve, the fit's residual standard error when that is larger and there are more than 3 data scales
(with exactly 3 the curve goes through every point). Every curve and speedup records which
(optsweep.analysis.speedup_noise), each curve the scales it fitted and left out, and each speedup its cost in
FLOPs and seconds (optsweep.analysis.speedup_costs).
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from ..params.sections import DEFAULT_SPEEDUP_TARGETS, SpeedupTarget
from ..params.settings import ParamsError
from ..results.speedup_documents import (
    Interval,
    LossCurve,
    SharedLaw,
    SizeLaw,
    Speedup,
    SpeedupResult,
    TransferGap,
    Unjudged,
    Verdict,
)
from ..results.speedup_documents import tokens_to_reach as _tokens_to_reach
from .hypotheses import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from .speedup_costs import cost_per_token, table_budgets, with_costs
from .speedup_laws import shared_law, size_laws
from .speedup_noise import NOISE_FLOOR, Measured, NoiseRule, RelativeNoise, measured_relative_noise
from .table import DIVERGED_STATUSES, MISSING_STATUSES

__all__ = [  # the documents live in optsweep.results.speedup_documents; importable from here as before
    "Interval", "LossCurve", "SharedLaw", "SizeLaw", "Speedup", "SpeedupResult", "TransferGap", "Verdict",
    "NOISE_FLOOR", "NoiseRule", "RelativeNoise", "compute_speedup", "fit_power_law", "fit_reference_curve",
    "measured_relative_noise", "no_speedup_above", "shrinks_with_model_size", "tuned_losses",
]

REFERENCE = "adamw"
REQUIRED = ("optimizer", "scale", "n_params", "tokens", "loss")
MIN_DATA_SCALES = 3
CLAIMED_MAX_SPEEDUP = 1.4  # the talk: no optimizer beat a well-tuned AdamW by more
SHRINKS = "the speedup shrinks with model size"
TRANSFER = "optimal hyperparameters do not transfer between optimizers"
BOOTSTRAP = (
    "parametric bootstrap (Gaussian residuals): each replicate adds N(0, noise^2) to AdamW's fitted losses and to the "
    "challenger's tuned loss, refits L(D) = a * D^-b + c and recomputes D_eff"
)


# --- the fit ----------------------------------------------------------------------------------------------


def _power_law(tokens: np.ndarray, log_a: float, b: float, c: float) -> np.ndarray:
    return np.exp(log_a - b * np.log(tokens)) + c


def fit_power_law(
    tokens: np.ndarray, losses: np.ndarray, start: tuple[float, float, float] | None = None
) -> tuple[float, float, float]:
    """(a, b, c) of L(D) = a * D^-b + c by least squares (scipy curve_fit, trust region, c >= 0, b in
    (0, 4]). D is scaled by its geometric mean inside the fit so that a stays of order one. The fit starts
    from `start` (an earlier (a, b, c)) or else from the best b on a grid, with a and c from linear least
    squares for it."""
    scale = float(np.exp(np.mean(np.log(tokens))))
    x = tokens / scale
    if start is not None:
        a, b, c = start
        p0 = (np.log(a) - b * np.log(scale), b, c)
    else:
        p0 = _grid_start(x, losses)
    with warnings.catch_warnings():  # the covariance goes unused (the bootstrap gives the intervals)
        warnings.simplefilter("ignore", OptimizeWarning)
        (log_a, b, c), _ = curve_fit(
            _power_law, x, losses, p0=p0, bounds=([-np.inf, 1e-4, 0.0], [np.inf, 4.0, np.inf]), max_nfev=2000
        )
    return float(np.exp(log_a) * scale**b), float(b), float(c)


def _grid_start(x: np.ndarray, losses: np.ndarray) -> tuple[float, float, float]:
    """(log a, b, c) with the b from a grid whose linear least-squares (a, c) fits best, a > 0 and c >= 0."""
    best = None
    for b in np.geomspace(0.02, 3.0, 40):
        design = np.column_stack([x**-b, np.ones_like(x)])
        (a, c), *_ = np.linalg.lstsq(design, losses, rcond=None)
        error = float(np.sum((design @ [a, c] - losses) ** 2))
        if a > 0 and c >= 0 and (best is None or error < best[0]):
            best = (error, float(np.log(a)), float(b), float(c))
    if best is None:  # losses that do not fall with data: a flat start, the bounds keep the fit sane
        return float(np.log(max(np.ptp(losses), 1e-3))), 0.3, max(float(losses.min()) - 0.1, 0.0)
    return best[1:]


# --- the table -------------------------------------------------------------------------------------------


def tuned_losses(table: pd.DataFrame, source: str = "runs table") -> pd.DataFrame:
    """One row per (optimizer, scale): its best finite loss, the run's tokens and the model size.

    Diverged runs (non-finite loss, or status diverged/failed) and skipped runs never count.
    """
    return _best(_finished(_validated(table, source)))


def _validated(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Every row, with the required columns present and numbers where numbers belong (one-line errors)."""
    for column in REQUIRED:
        if column not in table.columns:
            raise ParamsError(f"{source}: missing column {column!r}; a speedup table needs {', '.join(REQUIRED)}")
    runs = table.reset_index(drop=True)  # unique labels: the best run is found by label
    for column in ("n_params", "tokens", "loss"):
        runs[column] = pd.to_numeric(runs[column], errors="coerce").astype(float)
    for column in ("n_params", "tokens"):
        bad = ~(np.isfinite(runs[column]) & (runs[column] > 0))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = table[column].iloc[row]
            raise ParamsError(f"{source}: column {column!r}: data row {row + 1} has {value!r}: needs a positive number")
    return runs.assign(optimizer=runs["optimizer"].astype(str), scale=runs["scale"].astype(str))


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    if "status" in runs.columns:
        runs = runs[~runs["status"].isin([*DIVERGED_STATUSES, *MISSING_STATUSES])]
    return runs[np.isfinite(runs["loss"])]


def _best(runs: pd.DataFrame) -> pd.DataFrame:
    best = runs.loc[runs.groupby(["optimizer", "scale"], sort=True)["loss"].idxmin()]
    return best[["optimizer", "scale", "n_params", "tokens", "loss"]].reset_index(drop=True)


# --- speedup with intervals -----------------------------------------------------------------------------


def fit_reference_curve(
    ours: pd.DataFrame, base_noise: tuple[float, str], replicates: int, level: float, rng: np.random.Generator
) -> tuple[LossCurve, np.ndarray]:
    """The reference's L(D) at one model size (rows sorted by tokens) and its bootstrap refits (a, b, c)
    per replicate (NaN where curve_fit gave up). `base_noise`: the run noise at this size and its source
    (`NoiseRule.of`); the fit's residual SE replaces it when larger."""
    tokens, losses = ours["tokens"].to_numpy(float), ours["loss"].to_numpy(float)
    a, b, c = fit_power_law(tokens, losses)
    fitted = a * tokens**-b + c
    dof = len(tokens) - 3
    residual_se = float(np.sqrt(np.sum((losses - fitted) ** 2) / dof)) if dof > 0 else None
    noise, source = base_noise
    if residual_se is not None and residual_se > noise:  # the points scatter more than one run's noise says
        noise, source = residual_se, f"residual SE of the fit ({dof} dof; above the {source} {base_noise[0]:.3g})"
    boot = np.full((replicates, 3), np.nan)
    for i in range(replicates):
        try:
            boot[i] = fit_power_law(tokens, fitted + rng.normal(0.0, noise, len(tokens)), start=(a, b, c))
        except RuntimeError:  # curve_fit gave up on this replicate: left out of the intervals
            continue
    curve = LossCurve(
        n_params=float(ours["n_params"].iloc[0]), tokens=tokens.tolist(), losses=losses.tolist(), a=a, b=b, c=c,
        a_interval=_interval(boot[:, 0], level), b_interval=_interval(boot[:, 1], level),
        c_interval=_interval(boot[:, 2], level), residual_se=residual_se, noise=noise, noise_source=source,
        scales=ours["scale"].tolist(),
    )
    return curve, boot


def _interval(samples: np.ndarray, level: float) -> Interval:
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return (None, None)
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")  # inf-safe
    return (float(low) if np.isfinite(low) else None, float(high) if np.isfinite(high) else None)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def compute_speedup(
    table: pd.DataFrame,
    reference: str = REFERENCE,
    noise_floor: float = NOISE_FLOOR,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    source: str = "runs table",
    relative_noise: Mapping[str, Measured] | None = None,
    require_curve: bool = True,
    targets: list[SpeedupTarget] | tuple[SpeedupTarget, ...] = DEFAULT_SPEEDUP_TARGETS,
    stated_noise: float | None = None,
) -> SpeedupResult:
    """Speedups of every optimizer in `table` over `reference`, per scale, and the talk's claims judged;
    the size laws with predictions at `targets`, and the shared-exponent loss law (optsweep.analysis.speedup_laws).
    `relative_noise`: per optimizer, the relative std of one config's loss its analysis measured;
    `stated_noise` (analysis.speedup_noise): every run's noise instead (`NoiseRule`).
    `require_curve`: a table where no model size has 3 data scales of `reference` is an error (else the
    result has no speedups and `skipped` says why)."""
    rule = NoiseRule(noise_floor, stated_noise, relative_noise or {})
    runs = _validated(table, source)
    finished = _finished(runs)
    tuned = _best(finished)
    if reference not in set(tuned["optimizer"]):
        found = ", ".join(sorted(set(tuned["optimizer"]))) or "none"
        raise ParamsError(f"{source}: column 'optimizer': no finished run of reference {reference!r}; found {found}")
    rng = np.random.default_rng(seed)
    costs = cost_per_token(finished)
    curves, speedups, skipped = [], [], []
    draws: dict[tuple[str, str], np.ndarray] = {}  # bootstrap speedups per (optimizer, scale)
    for n_params, size in tuned.groupby("n_params", sort=True):
        ours = size[size["optimizer"] == reference].sort_values("tokens")
        if ours["tokens"].nunique() < MIN_DATA_SCALES:
            skipped.append(
                f"n_params {n_params:g}: {reference} has {ours['tokens'].nunique()} data scales, "
                f"the fit L(D) = a * D^-b + c needs {MIN_DATA_SCALES}"
            )
            continue
        curve, boot = fit_reference_curve(ours, rule.of(reference, float(ours["loss"].mean())), replicates, level, rng)
        curve = _with_points(curve, runs[runs["n_params"] == n_params], size, reference)
        curves.append(curve)
        reference_loss = dict(zip(ours["scale"], ours["loss"]))
        for row in size[size["optimizer"] != reference].itertuples():
            d_eff = curve.tokens_to_reach(row.loss)
            noise, noise_source = rule.of(row.optimizer, row.loss)
            challenger = row.loss + rng.normal(0.0, noise, replicates)
            samples = _tokens_to_reach(challenger, boot[:, 0], boot[:, 1], boot[:, 2]) / row.tokens
            draws[(row.optimizer, row.scale)] = samples
            speedups.append(with_costs(Speedup(
                optimizer=row.optimizer, scale=row.scale, n_params=curve.n_params, tokens=float(row.tokens),
                loss=float(row.loss), reference_loss=reference_loss.get(row.scale),
                effective_tokens=_finite_or_none(d_eff), speedup=_finite_or_none(d_eff / row.tokens),
                interval=_interval(samples, level), noise=noise, noise_source=noise_source,
                extrapolated=not curve.tokens[0] <= d_eff <= curve.tokens[-1],
                extrapolation=_extrapolation(curve, d_eff),
            ), costs, reference))
    if not curves and require_curve:
        raise ParamsError(f"{source}: no model size has {MIN_DATA_SCALES} data scales of {reference}: {skipped[0]}")
    judged = {s.optimizer for s in speedups}
    unjudged = []
    for optimizer in sorted(set(runs["optimizer"]) - judged - {reference}):
        why = f"no finished run at a model size where {reference}'s curve was fitted"
        skipped.append(f"optimizer {optimizer}: {why}")
        unjudged += [Unjudged(hypothesis=h, optimizer=optimizer, why=why) for h in (_no_speedup_text(), SHRINKS)]
    no_carried = "a runs table records no carried optimum (sweep results' `transfer` do)"
    unjudged += [Unjudged(hypothesis=TRANSFER, optimizer=optimizer, why=no_carried)
                 for optimizer in sorted(set(runs["optimizer"]) - {reference})]
    hypotheses = []
    for optimizer in sorted(judged):
        mine = [s for s in speedups if s.optimizer == optimizer]
        hypotheses.append(no_speedup_above(optimizer, mine))
        hypotheses.append(shrinks_with_model_size(optimizer, mine, draws, level))
    laws, left_out = size_laws(speedups, draws, targets, level)
    shared, why = shared_law(tuned, reference, rule.value, level)
    return SpeedupResult(
        reference=reference, level=level, noise_floor=noise_floor, stated_noise=stated_noise, bootstrap=BOOTSTRAP,
        replicates=replicates, curves=curves, speedups=speedups, skipped=[*skipped, *left_out, *([why] if why else [])],
        hypotheses=hypotheses, unjudged=unjudged, budgets=table_budgets(runs, tuned), size_laws=laws,
        shared_law=shared,
    )


def _with_points(curve: LossCurve, listed: pd.DataFrame, size: pd.DataFrame, reference: str) -> LossCurve:
    """The curve with the reference's scales at its size that it did not fit (`listed`: every run there, no
    finished one) and those it fitted beyond every other optimizer's data (`size`: the tuned losses there);
    those shape the curve where no speedup is read."""
    ours = listed.loc[listed["optimizer"] == reference, "scale"]
    left_out = [f"{scale}: no finished run" for scale in dict.fromkeys(ours) if scale not in curve.scales]
    others = size.loc[size["optimizer"] != reference, "tokens"]
    beyond = [scale for scale, tokens in zip(curve.scales, curve.tokens) if len(others) and tokens > others.max()]
    return curve.model_copy(update={"left_out": left_out, "beyond_others": beyond})


def _extrapolation(curve: LossCurve, d_eff: float) -> str | None:
    """How far D_eff lies outside the data the curve was fitted on (None: inside)."""
    low, high = curve.tokens[0], curve.tokens[-1]
    if not np.isfinite(d_eff):
        return "no finite D_eff: the loss is at or below the curve's asymptote c"
    if d_eff > high:
        return f"D_eff {d_eff:.3g} is {d_eff / high:.3g}x the largest data fitted ({high:.3g})"
    if d_eff < low:
        return f"D_eff {d_eff:.3g} is {low / d_eff:.3g}x below the smallest data fitted ({low:.3g})"
    return None


# --- the talk's claims ----------------------------------------------------------------------------------


def _no_speedup_text(claim: float = CLAIMED_MAX_SPEEDUP) -> str:
    return f"no speedup above {claim:g}x over a tuned AdamW"


def no_speedup_above(optimizer: str, speedups: list[Speedup], claim: float = CLAIMED_MAX_SPEEDUP) -> Verdict:
    """Contradicted when some scale's whole interval lies above `claim`, supported when every interval
    lies at or below it, else inconclusive. The margin is the distance of the deciding bound from `claim`;
    the estimate quoted is the largest speedup (an unbounded one first), whichever scale decided."""
    text = _no_speedup_text(claim)
    largest = max(speedups, key=lambda s: _bound(s.speedup))
    quoted = f"largest speedup {_speedup_text(largest)} at scale {largest.scale}"

    def verdict(name: str, why: str, margin: float | None) -> Verdict:
        return Verdict(hypothesis=text, optimizer=optimizer, verdict=name, why=f"{why}; {quoted}",
                       margin=_finite_or_none(margin) if margin is not None else None, estimate=largest.speedup,
                       interval=largest.interval, scale=largest.scale)

    above = [s for s in speedups if _bound(s.interval[0]) > claim]
    in_range = [s for s in above if not s.extrapolated]  # decide on AdamW's measured data where possible
    if above:
        top = max(in_range or above, key=lambda s: _bound(s.interval[0]))
        note = " (D_eff extrapolated beyond AdamW's data)" if top.extrapolated else ""
        return verdict(CONTRADICTED, f"at scale {top.scale} the speedup's interval lies above {claim:g}x{note}",
                       _bound(top.interval[0]) - claim)
    highest = max(speedups, key=lambda s: _bound(s.interval[1]))
    if _bound(highest.interval[1]) <= claim:
        return verdict(SUPPORTED, f"every scale's interval lies at or below {claim:g}x (highest upper bound: "
                       f"scale {highest.scale})", claim - highest.interval[1])
    straddles = ", ".join(s.scale for s in speedups if _bound(s.interval[1]) > claim)
    return verdict(INCONCLUSIVE, f"the interval of scale(s) {straddles} contains {claim:g}x", None)


def _speedup_text(speedup: Speedup) -> str:
    value = "unbounded" if speedup.speedup is None else f"{speedup.speedup:.3g}x"
    return value + (" (D_eff extrapolated)" if speedup.extrapolated else "")


def _bound(value: float | None) -> float:
    return np.inf if value is None else value


def _size_slope(log_speedup: np.ndarray, log_n: np.ndarray, log_ratio: np.ndarray) -> float:
    """d log(speedup) / d log(N), at a fixed data-to-model ratio D/N when the scales allow it."""
    design = np.column_stack([np.ones_like(log_n), log_n, log_ratio])
    if len(log_n) < 4 or np.linalg.matrix_rank(design) < 3:
        design = design[:, :2]
    coefficients, *_ = np.linalg.lstsq(design, log_speedup, rcond=None)
    return float(coefficients[1])


def shrinks_with_model_size(
    optimizer: str, speedups: list[Speedup], draws: dict[tuple[str, str], np.ndarray], level: float
) -> Verdict:
    """The slope of log(speedup) against log(model size) (at fixed D/N when there are enough scales), with
    its bootstrap interval: supported when the interval lies below 0, contradicted when above, else
    inconclusive. Replicates with an unbounded speedup are left out. The estimate and interval are the
    speedup's factor per doubling of model size, 2^slope."""
    text = SHRINKS
    if len({s.n_params for s in speedups}) < 2:
        return Verdict(hypothesis=text, optimizer=optimizer, verdict=INCONCLUSIVE,
                       why="speedups at one model size only", margin=None, estimate=None, interval=(None, None))
    log_n = np.log([s.n_params for s in speedups])
    log_ratio = np.log([s.tokens / s.n_params for s in speedups])
    samples = np.column_stack([draws[(s.optimizer, s.scale)] for s in speedups])
    usable = np.all(np.isfinite(samples) & (samples > 0), axis=1)
    slopes = np.array([_size_slope(np.log(row), log_n, log_ratio) for row in samples[usable]])
    point = [s.speedup for s in speedups]
    estimate = 2 ** _size_slope(np.log(point), log_n, log_ratio) if all(point) else None
    low, high = _interval(slopes, level) if len(slopes) else (None, None)
    per_doubling = (None if low is None else 2**low, None if high is None else 2**high)
    why = f"factor per doubling of N, from {usable.sum()} of {len(usable)} replicates"
    if high is not None and high < 0:
        return Verdict(hypothesis=text, optimizer=optimizer, verdict=SUPPORTED, why=why,
                       margin=1 - per_doubling[1], estimate=estimate, interval=per_doubling)
    if low is not None and low > 0:
        return Verdict(hypothesis=text, optimizer=optimizer, verdict=CONTRADICTED, why=why,
                       margin=per_doubling[0] - 1, estimate=estimate, interval=per_doubling)
    return Verdict(hypothesis=text, optimizer=optimizer, verdict=INCONCLUSIVE,
                   why=f"{why}; the interval contains 1 (no change)", margin=None, estimate=estimate,
                   interval=per_doubling)
