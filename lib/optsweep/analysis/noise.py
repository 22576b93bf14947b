"""How noisy one config's loss is, and where that figure came from.

A verdict is only as good as the noise it is judged against, and the scatter of runs about a fitted curve
is lack of fit plus noise, so it is never used. In order of precedence:
- *stated*: `analysis.noise` (absolute, or relative to each scale's best loss), for a lab that knows it;
- *seeds*: configs run on several seeds, paired under common random numbers (config and seed effects
  removed), on their own;
- *differences*: every four neighbouring grid values along one hyperparameter (all others equal, all four
  finished) give one contrast orthogonal to a quadratic on the natural axis, of unit length: a smooth
  landscape (a parabola, a plateau, a straight flank) cancels from it and leaves the noise. Their median
  absolute value / 0.6745 is the noise, so a few contrasts across a step or a cliff do not move it;
- *none*: nothing could measure it; the configured threshold then decides alone, and the output says so.
Noise is relative to each scale's best loss (run-to-run noise scales with the loss), unless stated
absolute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..axes import to_axis
from ..params.sections import AnalysisSettings
from .table import seed_noise

NoiseSource = Literal["stated", "seeds", "differences", "none"]
WINDOW = 4  # neighbouring grid values per contrast: the fewest that a quadratic does not fit exactly
MIN_CONTRASTS = 3  # fewer and a median says little
MEDIAN_ABS_NORMAL = float(norm.ppf(0.75))  # median |z| of a standard normal
# A relative noise below this is float round-off of a noise-free table, not noise: it counts as zero, or
# optima known to 1e-15 would weigh a billion times more than optima known to 1e-9.
ROUND_OFF = 1e-10


@dataclass(frozen=True)
class Noise:
    """The noise of one config's loss (relative to its scale's best loss, or absolute when stated so)."""

    source: NoiseSource
    relative: float  # std / the scale's best loss (for an absolute stated noise: / the mean best loss)
    absolute: float | None  # a stated absolute std, the same at every scale
    dof: int  # seed residual degrees of freedom, or the number of contrasts
    estimates: dict[str, dict[str, Any] | None]
    best_loss: dict[str, float]

    @property
    def measured(self) -> bool:
        """Whether some noise figure exists to test against (a zero one means every shift is real)."""
        return self.source != "none"

    def config_std(self, scale: str) -> float:
        """Std of one config's loss at `scale`."""
        return self.absolute if self.absolute is not None else self.relative * self.best_loss[scale]

    def difference_std(self, scale: str) -> float:
        """Std of the difference between two configs' losses at `scale`."""
        return math.sqrt(2.0) * self.config_std(scale)

    def as_dict(self) -> dict[str, Any]:
        seeds = self.estimates.get("seeds")
        return {
            "source": self.source,
            "relative_std": self.relative,
            "dof": self.dof,
            "sources": [self.source] if self.measured else [],
            "estimates": self.estimates,
            "per_scale": {scale: {"config_std": self.config_std(scale), "difference_std": self.difference_std(scale)}
                          for scale in self.best_loss},
            # the seed figures in loss units, where earlier readers found them
            **({"std": seeds["std"], "paired_std": seeds["paired_std"]} if seeds else {}),
            "seeds": seeds,
        }


def measure_noise(
    table: pd.DataFrame, configs: pd.DataFrame, best_loss: pd.Series, swept: list[str],
    settings: AnalysisSettings | None = None,
) -> Noise:
    """Every estimate the table (and the settings) allow; the first of stated, seeds, differences decides."""
    settings = settings or AnalysisSettings()
    best = {str(k): float(v) for k, v in best_loss.items()}
    estimates = {"stated": stated_noise(settings, best), "seeds": relative_seed_noise(table, best),
                 "differences": difference_noise(configs, swept, best)}
    for source in ("stated", "seeds", "differences"):
        found = estimates[source]
        if found is not None:
            return Noise(source, found["relative_std"], found.get("absolute_std"), found["dof"], estimates, best)
    return Noise("none", 0.0, None, 0, estimates, best)


def stated_noise(settings: AnalysisSettings, best_loss: dict[str, float]) -> dict[str, Any] | None:
    """`analysis.noise` as a relative std (and the absolute std when it was stated in loss units)."""
    if settings.noise is None:
        return None
    if settings.noise_kind == "relative":
        return {"relative_std": settings.noise, "dof": 0, "kind": "relative"}
    mean_best = float(np.mean(list(best_loss.values())))
    return {"relative_std": settings.noise / mean_best, "absolute_std": settings.noise, "dof": 0, "kind": "absolute"}


def relative_seed_noise(table: pd.DataFrame, best_loss: dict[str, float]) -> dict[str, Any] | None:
    """The seed noise of one compared config, relative to its scale's best loss, beside the figures in loss
    units (`seed_noise`). Under common random numbers the paired std / sqrt 2 is what a comparison sees."""
    absolute = seed_noise(table)
    if absolute is None:
        return None
    scaled = seed_noise(table.assign(loss=table["loss"] / table["scale"].map(best_loss)))
    assert scaled is not None  # the same configs have several seeds
    paired = scaled["paired_std"]
    per_config = paired / math.sqrt(2.0) if paired is not None else scaled["std"]
    method = "paired under common random numbers" if paired is not None else "about each config's mean"
    dof = absolute["dof"]
    return {**absolute, "relative_std": float(per_config), "dof": dof, "method": method}


def difference_noise(configs: pd.DataFrame, swept: list[str], best_loss: dict[str, float]) -> dict[str, Any] | None:
    """The median-absolute contrast of every four neighbouring finished grid values (None: fewer than
    `MIN_CONTRASTS` of them), relative to each scale's best loss."""
    contrasts: list[float] = []
    for hparam in swept:
        for line in _lines(configs, hparam, swept):
            contrasts += list(line_contrasts(hparam, line) / best_loss[str(line["scale"].iloc[0])])
    if len(contrasts) < MIN_CONTRASTS:
        return None
    relative = float(np.median(np.abs(contrasts)) / MEDIAN_ABS_NORMAL)
    relative = relative if relative > ROUND_OFF else 0.0
    return {"relative_std": relative, "dof": len(contrasts), "contrasts": len(contrasts),
            "method": f"median |contrast| / {MEDIAN_ABS_NORMAL:.4f} over {WINDOW} neighbouring grid values"}


def _lines(configs: pd.DataFrame, hparam: str, swept: list[str]) -> list[pd.DataFrame]:
    """The runs of one scale that share every other swept hyperparameter, one frame per such line."""
    keys = ["scale", *(h for h in swept if h != hparam)]
    long = configs.groupby(keys, sort=False)[hparam].transform("size") >= WINDOW
    return [frame for _, frame in configs[long].groupby(keys, sort=False)]


def line_contrasts(hparam: str, line: pd.DataFrame) -> np.ndarray:
    """One unit-length contrast orthogonal to (1, x, x^2) per window of `WINDOW` neighbouring finished runs."""
    x = to_axis(hparam, line[hparam].to_numpy(float))
    order = np.argsort(x)
    x, y = x[order], line["loss"].to_numpy(float)[order]
    out = []
    for start in range(len(x) - WINDOW + 1):
        xs, ys = x[start:start + WINDOW], y[start:start + WINDOW]
        if np.isnan(ys).any():
            continue
        out.append(float(quadratic_contrast(xs) @ ys))
    return np.array(out)


def quadratic_contrast(x: np.ndarray) -> np.ndarray:
    """The unit vector orthogonal to 1, x and x^2 at four points (the last left singular vector)."""
    u = (x - x.mean()) / (np.ptp(x) or 1.0)
    basis = np.stack([np.ones_like(u), u, u**2], axis=1)
    left, _, _ = np.linalg.svd(basis, full_matrices=True)
    return left[:, -1]
