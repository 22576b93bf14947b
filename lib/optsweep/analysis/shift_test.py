"""One test per hyperparameter: does one value (after the width rule, for lr) serve every scale?

Each scale's optimum x_s (natural axis; log lr + p log(width_s / reference width) under the rule
lr x width^p = constant) has a standard error se_s from its fit and the noise. Under "one value serves every
scale" the inverse-variance mean x0 is that value and Q = sum (x_s - x0)^2 / se_s^2 is chi-square with
(scales - 1) degrees of freedom (a Wald test of equal optima against one optimum per scale). A steady
trend (x_s linear in log N and log D) is also tested, on its slopes' 1-2 degrees of freedom, which has the
power where the optimum moves with scale; the hyperparameter's p-value is the smaller of the two, doubled.
The p-values of all hyperparameters are Holm-adjusted at `analysis.significance`: the family is the hyperparameters, not
every pair of scales. "The loss cares" is read on each scale's own fitted curve at the common value: the
value between the optima whose worst regret over the threshold is smallest (the best one value can do; x0
would overstate the cost whenever the errors differ). That worst regret minus its scale's threshold is the
verdict's margin. Without a measured noise (or with a zero one)
no test can be made: the threshold decides alone, and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy.stats import chi2, norm

from ..axes import from_axis, to_axis
from .optimum import WIDTH_RULES, Landscape, Regret

# The loss cares when the regret at the common value exceeds the threshold by this many of its own standard
# errors (one-sided 95%): a regret read off a noisy curve is itself noisy.
REGRET_Z = float(norm.isf(0.05))
TREND_COLLINEAR_CORR = 0.975  # |corr(log N, log D)| above which the trend is tested on log C alone
COMMON_CANDIDATES = 101  # values tried between the smallest and largest optimum for the common value


@dataclass
class ShiftTest:
    """The test of one hyperparameter under one width rule, and the regrets at the common value."""

    hparam: str
    rule: str
    power: float
    reference_width: int | None
    optima: dict[str, float]  # natural axis, at the reference width
    stderr: dict[str, float]
    pooled: float  # the inverse-variance mean of the optima (natural axis, at the reference width)
    common: float  # the minimax value the regrets are read at (natural axis, at the reference width)
    statistic: float | None
    dof: int
    p_value: float | None
    regrets: dict[str, Regret]
    thresholds: dict[str, float]
    p_adjusted: float | None = None
    significant: bool | None = None
    trend: dict[str, Any] | None = None  # the slope test against a steady trend in log N, log D
    notes: list[str] = field(default_factory=list)

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    def excess(self, scale: str) -> float:
        """Regret at the common value minus the threshold (a diverging value always exceeds)."""
        regret = self.regrets[scale]
        return math.inf if regret.diverges else regret.value - self.thresholds[scale]

    @property
    def worst_scale(self) -> str:
        return max(self.regrets, key=self.excess)

    @property
    def margin(self) -> float:
        """The worst regret at the common value minus that scale's threshold (finite: a diverging value's
        regret is the extrapolated lower bound)."""
        scale = self.worst_scale
        return self.regrets[scale].value - self.thresholds[scale]

    @property
    def required_margin(self) -> float:
        """What the margin must exceed for the loss to care: the worst regret's own error (one-sided 95%)."""
        return REGRET_Z * self.regrets[self.worst_scale].stderr

    @property
    def loss_cares(self) -> bool:
        """The common value costs more than the threshold at some scale, beyond its regret's error."""
        return any(self.excess(s) > REGRET_Z * self.regrets[s].stderr for s in self.regrets)

    @property
    def loss_indifferent(self) -> bool:
        """The common value costs less than the threshold at every scale, beyond each regret's error."""
        return all(self.excess(s) < -REGRET_Z * self.regrets[s].stderr for s in self.regrets)

    def common_at(self, land: Landscape, scale: str) -> float:
        """The common value carried to `scale` (on the hyperparameter's own scale)."""
        value = float(from_axis(self.hparam, self.common))
        return land.from_reference(value, scale, self.power, self.reference_width)

    def as_dict(self, land: Landscape) -> dict[str, Any]:
        return {
            "test": "Wald chi-square: one optimum for every scale vs one per scale",
            "width_rule": self.rule, "reference_width": self.reference_width,
            "statistic": self.statistic, "dof": self.dof, "p_value": self.p_value,
            "p_holm": self.p_adjusted, "significant": self.significant, "trend": self.trend,
            "common_value": float(from_axis(self.hparam, self.common)),
            "pooled_optimum": float(from_axis(self.hparam, self.pooled)),
            "per_scale": {
                scale: {"optimum_at_reference": float(from_axis(self.hparam, self.optima[scale])),
                        "stderr": self.stderr[scale], "common_value": self.common_at(land, scale),
                        **self.regrets[scale].as_dict(), "threshold": self.thresholds[scale]}
                for scale in self.optima
            },
            "notes": self.notes,
        }


def shift_test(land: Landscape, hparam: str, rule: str, thresholds: dict[str, float]) -> ShiftTest:
    """The Wald test of one hyperparameter under `rule`, with each scale's regret at the common value."""
    power = WIDTH_RULES[rule]
    fits = land.fits[hparam]
    reference = int(min(land.width(s) for s in fits)) if power else None
    optima = {s: _at_reference(land, hparam, s, power, reference) for s in fits}
    stderr = {s: float(f.optimum.stderr) for s, f in fits.items()}
    pooled, statistic, p_value, notes = _wald(optima, stderr, land.noise.measured)
    trend = _trend(optima, stderr, land) if p_value is not None else None
    if trend is not None:
        # two alternatives, each with a valid test: Bonferroni over the pair
        p_value = min(1.0, 2 * min(p_value, trend["p_value"]))
    test = ShiftTest(hparam, rule, power, reference, optima, stderr, pooled, pooled, statistic, len(optima) - 1,
                     p_value, {}, {s: thresholds[s] for s in fits}, trend=trend, notes=notes)
    test.common = _minimax_common(land, test)
    test.regrets = {s: land.regret_of(hparam, test.common_at(land, s), s) for s in fits}
    return test


def _minimax_common(land: Landscape, test: ShiftTest) -> float:
    """The value (natural axis, at the reference width) between the scales' optima whose worst excess over
    the threshold is smallest: the best case for "one value serves every scale". Only a value that every
    scale can run competes (a warmup longer than one scale's runs serves no scale there); when none between
    the optima can, the largest value below them that can, and the test's notes say so."""
    low, high = min(test.optima.values()), max(test.optima.values())

    def runnable(x: float) -> bool:
        test.common = x
        return all(land.can_run(test.hparam, test.common_at(land, s), s) for s in test.optima)

    def worst(x: float) -> float:
        test.common = x
        return max(land.regret_of(test.hparam, test.common_at(land, s), s).value - test.thresholds[s]
                   for s in test.optima)

    candidates = [float(x) for x in np.linspace(low, high, COMMON_CANDIDATES if high - low > 1e-12 else 1)]
    runnable_candidates = [x for x in candidates if runnable(x)]
    if len(runnable_candidates) < len(candidates):
        test.notes.append(f"the common value is limited to what every scale can run ({test.hparam} shorter "
                          f"than the shortest run, {land.shortest_run(test.optima)} steps)")
    if not runnable_candidates:
        return _largest_runnable_below(low, runnable)
    return runnable_candidates[int(np.argmin([worst(x) for x in runnable_candidates]))]


def _largest_runnable_below(value: float, runnable: Callable[[float], bool], halvings: int = 40) -> float:
    """Bisection on the natural axis between the domain's start, 0 (a warmup of 0 steps always runs), and
    `value` (which does not)."""
    good, bad = 0.0, value
    for _ in range(halvings):
        middle = (good + bad) / 2
        good, bad = (middle, bad) if runnable(middle) else (good, middle)
    return good


def _at_reference(land: Landscape, hparam: str, scale: str, power: float, reference: int | None) -> float:
    value = land.fits[hparam][scale].optimum.refined
    return float(to_axis(hparam, land.to_reference(value, scale, power, reference)))


def _wald(
    optima: dict[str, float], stderr: dict[str, float], measured: bool
) -> tuple[float, float | None, float | None, list[str]]:
    """The common value (inverse-variance mean, or the plain mean when the errors are zero), Q and its
    p-value (None: no test, when the noise is not measured or is zero)."""
    x = np.array(list(optima.values()))
    se = np.array(list(stderr.values()))
    if not measured or not np.all(se > 0):
        why = ("no noise was measured or stated" if not measured
               else "the measured noise is zero: every shift is real")
        return float(x.mean()), None, None, [f"no test: {why}; the threshold decides alone"]
    weights = 1.0 / se**2
    common = float(np.sum(weights * x) / np.sum(weights))
    statistic = float(np.sum(weights * (x - common) ** 2))
    return common, statistic, float(chi2.sf(statistic, len(x) - 1)), []


def _trend(optima: dict[str, float], stderr: dict[str, float], land: Landscape) -> dict[str, Any] | None:
    """The Wald test of the slopes of x_s = a + b log N_s + c log D_s (weighted by the known 1 / se_s^2): a
    shift that follows scale, on fewer degrees of freedom than "each scale its own optimum", so with more
    power where the optimum moves steadily. log C = log 6 N D alone when N and D move together. None with
    too few scales for it to differ from the any-shift test."""
    scales = list(optima)
    log_n = np.log([float(land.scales.loc[s, "n_params"]) for s in scales])
    log_d = np.log([float(land.scales.loc[s, "tokens"]) for s in scales])
    columns = [c - c.mean() for c in (log_n, log_d) if np.ptp(c) > 1e-9]
    if len(columns) == 2 and abs(np.corrcoef(*columns)[0, 1]) > TREND_COLLINEAR_CORR:
        columns = [columns[0] + columns[1]]
    if not columns or len(columns) >= len(scales) - 1:
        return None
    design = np.column_stack([np.ones(len(scales)), *columns])
    weights = 1.0 / np.array([stderr[s] for s in scales]) ** 2
    covariance = np.linalg.pinv(design.T @ (design * weights[:, None]))
    slopes = (covariance @ design.T @ (weights * np.array([optima[s] for s in scales])))[1:]
    statistic = float(slopes @ np.linalg.pinv(covariance[1:, 1:]) @ slopes)
    return {"statistic": statistic, "dof": len(slopes), "p_value": float(chi2.sf(statistic, len(slopes))),
            "regressors": "log N, log D" if len(columns) == 2 else "one of log N, log D, log C"}


def best_rule(land: Landscape, hparam: str, thresholds: dict[str, float]) -> tuple[ShiftTest, dict[str, ShiftTest]]:
    """lr on scales of several widths: the width rule under which the test is least significant (the
    smallest Q, or without a test the smallest worst regret), ties to "none"; every other hyperparameter
    (and lr at one width) is tested without a rule."""
    widths = {land.width(s) for s in land.fits[hparam]}
    rules = list(WIDTH_RULES) if hparam == "lr" and len(widths) > 1 else ["none"]
    tests = {rule: shift_test(land, hparam, rule, thresholds) for rule in rules}

    def key(test: ShiftTest) -> tuple[float, float]:
        return (-test.p_value, test.statistic) if test.tested else (0.0, test.excess(test.worst_scale))

    return min(tests.values(), key=key), tests


def holm(tests: list[ShiftTest], family_error: float) -> None:
    """Holm's step-down adjustment over the tested hyperparameters (sets p_adjusted and significant)."""
    tested = sorted((t for t in tests if t.tested), key=lambda t: t.p_value)
    running = 0.0
    for rank, test in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * test.p_value))
        test.p_adjusted = running
        test.significant = running < family_error
