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
loss noise of one run, is the largest of a floor (default 3e-3, the original study's near-best tolerance),
the noise the optimizer's own sensitivity analysis measured (`relative_noise`: the relative std of one
config's loss, from seeds and the surface scatter, times the loss) and, for AdamW's curve, the fit's residual
standard error when there are more than 3 data scales (with exactly 3 the curve goes through every point).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from ..params.sections import DEFAULT_SPEEDUP_TARGETS, SpeedupTarget
from ..params.settings import ParamsError
from ..results.documents import SensitivityResult
from ..results.speedup_documents import (
    Interval,
    LossCurve,
    SharedLaw,
    SizeLaw,
    Speedup,
    SpeedupResult,
    TransferGap,
    Verdict,
)
from ..results.speedup_documents import tokens_to_reach as _tokens_to_reach
from .hypotheses import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from .speedup_laws import shared_law, size_laws
from .table import DIVERGED_STATUSES, MISSING_STATUSES

__all__ = [  # the documents live in optsweep.results.speedup_documents; importable from here as before
    "Interval", "LossCurve", "SharedLaw", "SizeLaw", "Speedup", "SpeedupResult", "TransferGap", "Verdict",
    "compute_speedup", "fit_power_law", "fit_reference_curve", "measured_relative_noise", "no_speedup_above",
    "run_noise", "shrinks_with_model_size", "tuned_losses",
]

REFERENCE = "adamw"
REQUIRED = ("optimizer", "scale", "n_params", "tokens", "loss")
MIN_DATA_SCALES = 3
NOISE_FLOOR = 3e-3
CLAIMED_MAX_SPEEDUP = 1.4  # the talk: no optimizer beat a well-tuned AdamW by more
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
    if "status" in runs.columns:
        runs = runs[~runs["status"].isin([*DIVERGED_STATUSES, *MISSING_STATUSES])]
    runs = runs[np.isfinite(runs["loss"])]
    runs = runs.assign(optimizer=runs["optimizer"].astype(str), scale=runs["scale"].astype(str))
    best = runs.loc[runs.groupby(["optimizer", "scale"], sort=True)["loss"].idxmin()]
    return best[["optimizer", "scale", "n_params", "tokens", "loss"]].reset_index(drop=True)


# --- speedup with intervals -----------------------------------------------------------------------------


def measured_relative_noise(sensitivity: SensitivityResult) -> float | None:
    """The relative std of one config's loss that a sensitivity analysis measured (None: not measured)."""
    return sensitivity.noise.relative_std if sensitivity.noise else None


def run_noise(loss: float, noise_floor: float, relative_noise: float | None) -> float:
    """The loss noise of one run: the measured relative noise times the loss, at least the floor."""
    return max(noise_floor, (relative_noise or 0.0) * loss)


def fit_reference_curve(
    ours: pd.DataFrame, noise_floor: float, replicates: int, level: float, rng: np.random.Generator
) -> tuple[LossCurve, np.ndarray]:
    """The reference's L(D) at one model size (rows sorted by tokens) and its bootstrap refits (a, b, c)
    per replicate (NaN where curve_fit gave up). `noise_floor`: the run noise measured at this size, or the
    floor."""
    tokens, losses = ours["tokens"].to_numpy(float), ours["loss"].to_numpy(float)
    a, b, c = fit_power_law(tokens, losses)
    fitted = a * tokens**-b + c
    dof = len(tokens) - 3
    residual_se = float(np.sqrt(np.sum((losses - fitted) ** 2) / dof)) if dof > 0 else None
    noise = max(noise_floor, residual_se or 0.0)
    boot = np.full((replicates, 3), np.nan)
    for i in range(replicates):
        try:
            boot[i] = fit_power_law(tokens, fitted + rng.normal(0.0, noise, len(tokens)), start=(a, b, c))
        except RuntimeError:  # curve_fit gave up on this replicate: left out of the intervals
            continue
    curve = LossCurve(
        n_params=float(ours["n_params"].iloc[0]), tokens=tokens.tolist(), losses=losses.tolist(), a=a, b=b, c=c,
        a_interval=_interval(boot[:, 0], level), b_interval=_interval(boot[:, 1], level),
        c_interval=_interval(boot[:, 2], level), residual_se=residual_se, noise=noise,
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
    relative_noise: dict[str, float] | None = None,
    require_curve: bool = True,
    targets: list[SpeedupTarget] | tuple[SpeedupTarget, ...] = DEFAULT_SPEEDUP_TARGETS,
) -> SpeedupResult:
    """Speedups of every optimizer in `table` over `reference`, per scale, and the talk's claims judged;
    the size laws with predictions at `targets`, and the shared-exponent loss law (optsweep.analysis.speedup_laws).
    `relative_noise`: per optimizer, the relative std of one config's loss its analysis measured.
    `require_curve`: a table where no model size has 3 data scales of `reference` is an error (else the
    result has no speedups and `skipped` says why)."""
    relative_noise = relative_noise or {}
    tuned = tuned_losses(table, source)
    if reference not in set(tuned["optimizer"]):
        found = ", ".join(sorted(set(tuned["optimizer"]))) or "none"
        raise ParamsError(f"{source}: column 'optimizer': no finished run of reference {reference!r}; found {found}")
    rng = np.random.default_rng(seed)
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
        measured = run_noise(float(ours["loss"].mean()), noise_floor, relative_noise.get(reference))
        curve, boot = fit_reference_curve(ours, measured, replicates, level, rng)
        curves.append(curve)
        reference_loss = dict(zip(ours["scale"], ours["loss"]))
        for row in size[size["optimizer"] != reference].itertuples():
            d_eff = curve.tokens_to_reach(row.loss)
            noise = run_noise(row.loss, noise_floor, relative_noise.get(row.optimizer))
            challenger = row.loss + rng.normal(0.0, noise, replicates)
            samples = _tokens_to_reach(challenger, boot[:, 0], boot[:, 1], boot[:, 2]) / row.tokens
            draws[(row.optimizer, row.scale)] = samples
            speedups.append(Speedup(
                optimizer=row.optimizer, scale=row.scale, n_params=curve.n_params, tokens=float(row.tokens),
                loss=float(row.loss), reference_loss=reference_loss.get(row.scale),
                effective_tokens=_finite_or_none(d_eff), speedup=_finite_or_none(d_eff / row.tokens),
                interval=_interval(samples, level), noise=noise,
                extrapolated=not curve.tokens[0] <= d_eff <= curve.tokens[-1],
            ))
    if not curves and require_curve:
        raise ParamsError(f"{source}: no model size has {MIN_DATA_SCALES} data scales of {reference}: {skipped[0]}")
    judged = {s.optimizer for s in speedups}
    for optimizer in sorted(set(tuned["optimizer"]) - judged - {reference}):
        skipped.append(f"optimizer {optimizer}: no run at a model size where {reference}'s curve was fitted")
    hypotheses = []
    for optimizer in sorted(judged):
        mine = [s for s in speedups if s.optimizer == optimizer]
        hypotheses.append(no_speedup_above(optimizer, mine))
        hypotheses.append(shrinks_with_model_size(optimizer, mine, draws, level))
    laws, left_out = size_laws(speedups, draws, targets, level)
    shared, why = shared_law(
        tuned, reference, lambda optimizer, loss: run_noise(loss, noise_floor, relative_noise.get(optimizer)), level
    )
    return SpeedupResult(
        reference=reference, level=level, noise_floor=noise_floor, bootstrap=BOOTSTRAP,
        replicates=replicates, curves=curves, speedups=speedups, skipped=[*skipped, *left_out, *([why] if why else [])],
        hypotheses=hypotheses, size_laws=laws, shared_law=shared,
    )


# --- the talk's claims ----------------------------------------------------------------------------------


def no_speedup_above(optimizer: str, speedups: list[Speedup], claim: float = CLAIMED_MAX_SPEEDUP) -> Verdict:
    """Contradicted when some scale's whole interval lies above `claim`, supported when every interval
    lies at or below it, else inconclusive. The margin is the distance of the deciding bound from `claim`."""
    text = f"no speedup above {claim:g}x over a tuned AdamW"
    above = [s for s in speedups if _bound(s.interval[0]) > claim]
    in_range = [s for s in above if not s.extrapolated]  # decide on AdamW's measured data where possible
    top = max(in_range or above or speedups, key=lambda s: _bound(s.interval[0]))
    if above:
        note = " (D_eff extrapolated beyond AdamW's data)" if top.extrapolated else ""
        return Verdict(hypothesis=text, optimizer=optimizer, verdict=CONTRADICTED,
                       why=f"at scale {top.scale} the speedup's interval lies above {claim:g}x{note}",
                       margin=_finite_or_none(_bound(top.interval[0]) - claim), estimate=top.speedup,
                       interval=top.interval)
    highest = max(speedups, key=lambda s: _bound(s.interval[1]))
    if _bound(highest.interval[1]) <= claim:
        return Verdict(hypothesis=text, optimizer=optimizer, verdict=SUPPORTED,
                       why=f"every scale's interval lies at or below {claim:g}x (highest: scale {highest.scale})",
                       margin=claim - highest.interval[1], estimate=highest.speedup, interval=highest.interval)
    straddles = ", ".join(s.scale for s in speedups if _bound(s.interval[1]) > claim)
    return Verdict(hypothesis=text, optimizer=optimizer, verdict=INCONCLUSIVE,
                   why=f"the interval of scale(s) {straddles} contains {claim:g}x",
                   margin=None, estimate=highest.speedup, interval=highest.interval)


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
    text = "the speedup shrinks with model size"
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
