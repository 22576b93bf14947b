"""Laws across model sizes for the speedup over a tuned AdamW: where each optimizer's speedup is heading.

    laws = size_laws(speedups, draws, targets, level)      # per optimizer: speedup against N (and D/N)
    law = shared_law(tuned, reference, noise_of, level)    # one loss law, per-optimizer efficiency factors

**Size laws.** Per optimizer, log(speedup) = c + slope * log N (+ ratio_slope * log(D/N) when its scales
span at least two data-to-model ratios), fitted by weighted least squares (statsmodels WLS). Each point's
weight is 1 / var(log speedup) over its bootstrap replicates (optsweep.analysis.speedup), so the intervals
carry the noise of every speedup; when the points scatter more than those variances allow (chi^2 / dof > 1),
the covariance is scaled up by it: lack of fit widens the intervals, it never narrows them. The predictions
at `targets` (default 7B at 1x and 8x Chinchilla) are the fitted mean with its interval, flagged
`extrapolated` when the size or ratio lies outside the measured ones (a 7B prediction from 0.1-1.2B always is).

**Shared law** (after Volkova et al. 2026, "Towards Robust Scaling Laws for Optimizers"): one loss law for
all optimizers, L = E + A * (rho_N N)^-alpha + B * (rho_D D)^-beta, with the exponents and E, A, B shared
and per-optimizer efficiency factors rho_N, rho_D (the reference's fixed at 1): rho_D > 1 means the optimizer
uses data as AdamW would use rho_D times as much. Fitted by nonlinear least squares (scipy curve_fit) with
each tuned loss's noise as its sigma, scaled up by the lack of fit as above; Wald intervals, on the log
scale for A, B and the rhos.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.stats import norm

from ..params.sections import SpeedupTarget
from ..results.speedup_documents import Estimate, SharedLaw, SizeLaw, SizePrediction

MIN_BOOTSTRAP = 20  # finite replicates a speedup needs for its variance


# --- size laws ------------------------------------------------------------------------------------------


def size_laws(
    speedups: Sequence, draws: dict[tuple[str, str], np.ndarray], targets: Sequence[SpeedupTarget], level: float
) -> tuple[list[SizeLaw], list[str]]:
    """A size law per optimizer with speedups at >= 2 model sizes and a degree of freedom left; and a line for
    each point or optimizer left out. `speedups`: `Speedup` rows; `draws`: their bootstrap replicates."""
    laws, left_out = [], []
    for optimizer in sorted({s.optimizer for s in speedups}):
        usable = []
        for s in (s for s in speedups if s.optimizer == optimizer):
            samples = draws[(s.optimizer, s.scale)]
            finite = samples[np.isfinite(samples) & (samples > 0)]
            if s.speedup is None or len(finite) < MIN_BOOTSTRAP:
                left_out.append(f"size law {optimizer}: scale {s.scale} left out (unbounded speedup)")
                continue
            usable.append((s, float(np.var(np.log(finite), ddof=1))))
        law = fit_size_law(optimizer, usable, targets, level)
        if law is None:
            left_out.append(f"size law {optimizer}: needs speedups at 2 model sizes and more points than coefficients")
        else:
            laws.append(law)
    return laws, left_out


def fit_size_law(
    optimizer: str, points: list[tuple], targets: Sequence[SpeedupTarget], level: float
) -> SizeLaw | None:
    """WLS of log(speedup) on log N (and log(D/N) when the points span two ratios); None when too few."""
    if len({s.n_params for s, _ in points}) < 2:
        return None
    log_n = np.log([s.n_params for s, _ in points])
    log_ratio = np.log([s.tokens / s.n_params for s, _ in points])
    with_ratio = np.ptp(log_ratio) > 1e-6 and len(points) > 3
    names = ["log_c", "slope", "ratio_slope"] if with_ratio else ["log_c", "slope"]
    design = np.column_stack([np.ones_like(log_n), log_n, log_ratio][: len(names)])
    if len(points) <= len(names) or np.linalg.matrix_rank(design) < len(names):
        return None
    y = np.log([s.speedup for s, _ in points])
    weights = 1.0 / np.maximum([var for _, var in points], 1e-12)
    model = sm.WLS(y, design, weights=weights)
    lack_of_fit = float(model.fit().scale)
    fit = model.fit(cov_type="fixed scale", cov_kwds={"scale": max(1.0, lack_of_fit)})
    alpha = 1 - level
    low, high = fit.conf_int(alpha).T
    coefficients = {n: Estimate(estimate=float(e), interval=(float(lo), float(hi)))
                    for n, e, lo, hi in zip(names, fit.params, low, high)}
    slope = coefficients["slope"]
    per_doubling = Estimate(estimate=2**slope.estimate, interval=(2 ** slope.interval[0], 2 ** slope.interval[1]))
    predictions = []
    for target in targets:
        ratio = math.log(target.tokens / target.n_params)
        row = np.array([[1.0, math.log(target.n_params), ratio][: len(names)]])
        frame = fit.get_prediction(row).summary_frame(alpha=alpha)
        outside_n = not log_n.min() - 1e-9 <= math.log(target.n_params) <= log_n.max() + 1e-9
        outside_ratio = not log_ratio.min() - 1e-9 <= ratio <= log_ratio.max() + 1e-9
        predictions.append(SizePrediction(
            n_params=target.n_params, chinchilla=target.chinchilla, tokens=target.tokens,
            speedup=float(np.exp(frame["mean"].iloc[0])),
            interval=(float(np.exp(frame["mean_ci_lower"].iloc[0])), float(np.exp(frame["mean_ci_upper"].iloc[0]))),
            extrapolated=bool(outside_n or outside_ratio),
        ))
    form = "log(speedup) = log_c + slope * log(N)" + (" + ratio_slope * log(D/N)" if with_ratio else "")
    return SizeLaw(optimizer=optimizer, form=form, coefficients=coefficients, per_doubling=per_doubling,
                   scales=[s.scale for s, _ in points], dof=int(fit.df_resid), lack_of_fit=lack_of_fit,
                   predictions=predictions)


# --- the shared-exponent loss law -----------------------------------------------------------------------

SHARED_FORM = "L = E + A * (rho_N * N)^-alpha + B * (rho_D * D)^-beta"


def shared_law(
    tuned: pd.DataFrame, reference: str, noise_of: Callable[[str, float], float], level: float
) -> tuple[SharedLaw | None, str | None]:
    """The shared law over `tuned` (one row per optimizer and scale: n_params, tokens, loss), or None and why.
    `noise_of(optimizer, loss)`: the loss noise of one run, each point's sigma."""
    others = sorted(set(tuned["optimizer"]) - {reference})
    n_coefficients = 5 + 2 * len(others)
    if tuned["n_params"].nunique() < 2 or tuned["tokens"].nunique() < 2 or len(tuned) <= n_coefficients:
        return None, f"shared law: needs 2 model sizes, 2 data scales and more than {n_coefficients} tuned losses"
    n_scale = float(np.exp(np.log(tuned["n_params"]).mean()))
    d_scale = float(np.exp(np.log(tuned["tokens"]).mean()))
    index = {name: i for i, name in enumerate(others)}
    which = np.array([index.get(o, -1) for o in tuned["optimizer"]])
    x = np.vstack([tuned["n_params"].to_numpy(float) / n_scale, tuned["tokens"].to_numpy(float) / d_scale, which])
    losses = tuned["loss"].to_numpy(float)
    sigma = np.array([noise_of(o, loss) for o, loss in zip(tuned["optimizer"], losses)])

    def law(x: np.ndarray, e, log_a, alpha, log_b, beta, *log_rhos) -> np.ndarray:
        n, d, k = x[0], x[1], x[2].astype(int)
        rho_n = np.concatenate([log_rhos[: len(others)], [0.0]])[k]  # k = -1: the reference, log rho = 0
        rho_d = np.concatenate([log_rhos[len(others):], [0.0]])[k]
        return e + np.exp(log_a - alpha * (rho_n + np.log(n))) + np.exp(log_b - beta * (rho_d + np.log(d)))

    spread = max(float(np.ptp(losses)), 1e-3)
    p0 = [max(losses.min() - spread, 0.0), math.log(spread / 2), 0.3, math.log(spread / 2), 0.3]
    p0 += [0.0] * (2 * len(others))
    lower = [0.0, -np.inf, 0.01, -np.inf, 0.01] + [-np.inf] * (2 * len(others))
    upper = [np.inf, np.inf, 3.0, np.inf, 3.0] + [np.inf] * (2 * len(others))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, cov = curve_fit(law, x, losses, p0=p0, sigma=sigma, absolute_sigma=True,
                                    bounds=(lower, upper), max_nfev=20000)
    except (RuntimeError, ValueError) as error:
        return None, f"shared law: the fit did not converge ({error})"
    residuals = losses - law(x, *params)
    dof = len(losses) - len(params)
    lack_of_fit = float(np.sum((residuals / sigma) ** 2) / dof)
    se = np.sqrt(np.diag(cov) * max(1.0, lack_of_fit))
    z = float(norm.isf((1 - level) / 2))

    def plain(i: int) -> Estimate:
        low, high = params[i] - z * se[i], params[i] + z * se[i]
        return Estimate(estimate=float(params[i]), interval=(float(low), float(high)))

    def logged(i: int, shift: float = 0.0) -> Estimate:
        """exp of a log-scale coefficient; `shift` undoes the normalisation of N or D inside the fit."""
        value, low, high = params[i] + shift, params[i] - z * se[i] + shift, params[i] + z * se[i] + shift
        return Estimate(estimate=float(np.exp(value)), interval=(float(np.exp(low)), float(np.exp(high))))

    def rho(offset: int) -> dict[str, Estimate]:
        one = Estimate(estimate=1.0, interval=(1.0, 1.0))
        return {reference: one, **{o: logged(5 + offset + i) for o, i in index.items()}}

    if not np.all(np.isfinite(se)):
        return None, "shared law: the fit's covariance is singular (a coefficient is not identified)"
    alpha, beta = params[2], params[4]
    return SharedLaw(
        form=SHARED_FORM, reference=reference, E=plain(0), A=logged(1, alpha * math.log(n_scale)), alpha=plain(2),
        B=logged(3, beta * math.log(d_scale)), beta=plain(4), rho_N=rho(0), rho_D=rho(len(others)),
        points=len(losses), residual_se=float(np.sqrt(np.sum(residuals**2) / dof)), lack_of_fit=lack_of_fit,
    ), None
