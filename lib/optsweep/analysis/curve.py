"""A quadratic fitted on a hyperparameter's natural axis: its vertex and curvature with their standard errors,
whether it misses its runs by more than the noise, and what a value costs on it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from .noise import ROUND_OFF

MISFIT_P = 0.001  # residuals this unlikely under the noise mean the quadratic does not describe its window


@dataclass(frozen=True)
class Curve:
    """The local quadratic of one slice: loss = c0 + c1 u + c2 u^2 with u = x - center, its unit-noise
    covariance (times noise^2 for the real one), the window it was fitted on and the noise std."""

    coefficients: np.ndarray
    unit_covariance: np.ndarray
    center: float
    window: tuple[float, float]
    noise: float
    rss: float = 0.0  # the fit's residual sum of squares
    dof: int = 0  # and its residual degrees of freedom

    @property
    def convex(self) -> bool:
        return bool(self.coefficients[2] > 0)

    def misfits(self, loss: float) -> bool:
        """Whether the residuals are far beyond the noise (chi-square, p < `MISFIT_P`): the quadratic does not
        describe the runs it was fitted to (a blown-up run, a step), so its vertex means nothing. The noise
        is floored at float round-off of `loss`, so a noise-free exact quadratic fits."""
        if self.dof == 0:
            return False
        floor = max(self.noise, ROUND_OFF * abs(loss))
        return bool(self.rss / floor**2 > chi2.isf(MISFIT_P, self.dof))

    @property
    def curvature_z(self) -> float:
        """The curvature over its standard error (infinite without noise)."""
        stderr = self.noise * math.sqrt(max(self.unit_covariance[2, 2], 0.0))
        return float(self.coefficients[2] / stderr) if stderr > 0 else math.inf

    @property
    def vertex(self) -> float:
        _, c1, c2 = self.coefficients
        return self.center - c1 / (2 * c2)

    def vertex_stderr(self, z: float = 1.96) -> float:
        """Half the width of Fieller's interval for the vertex, over z (the delta method's error when that is
        wider): the vertex divides by the curvature, so its error is lopsided long before the curvature is
        lost in the noise, and the delta method alone would understate it."""
        _, c1, c2 = self.coefficients
        delta = self._stderr(np.array([0.0, -1 / (2 * c2), c1 / (2 * c2**2)]))
        cov = self.noise**2 * self.unit_covariance
        # |c1 + 2 c2 u| <= z sd(c1 + 2 c2 u): a quadratic in u, bounded when the curvature is significant
        a = 4 * c2**2 - 4 * z**2 * cov[2, 2]
        b = 4 * c1 * c2 - 4 * z**2 * cov[1, 2]
        c = c1**2 - z**2 * cov[1, 1]
        if self.noise == 0 or a <= 0 or b * b - 4 * a * c < 0:
            return delta
        # the roots of a u^2 + b u + c are sqrt(b^2 - 4ac) / a apart: half of that is the interval's half-width
        return max(delta, math.sqrt(b * b - 4 * a * c) / (2 * a) / z)

    def regret(self, x: float) -> tuple[float, float]:
        """Loss at x above the vertex (c2 (x - vertex)^2) and its standard error."""
        _, c1, c2 = self.coefficients
        u = x - self.center
        value = c2 * u**2 + c1 * u + c1**2 / (4 * c2)
        gradient = np.array([0.0, u + c1 / (2 * c2), u**2 - c1**2 / (4 * c2**2)])
        return float(max(value, 0.0)), self._stderr(gradient)

    def _stderr(self, gradient: np.ndarray) -> float:
        return float(self.noise * math.sqrt(max(gradient @ self.unit_covariance @ gradient, 0.0)))

