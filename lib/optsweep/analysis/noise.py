"""How noisy a config's loss is, measured from the table itself.

A verdict is only as good as the noise it is judged against, and many studies run one seed per config. So
the noise is measured two ways and pooled when both exist:
- *surface scatter*: at each scale, a local quadratic surface (on the natural axes, with the cross terms
  the design supports) is fitted by OLS to the configs within `WINDOW` grid steps of the best one; the
  residual variance is the noise of one config's loss. The true surface is smooth there, so what the
  quadratic cannot follow is noise.
- *seeds*: configs run on several seeds (the paired noise when configs share seeds: common random numbers).
Noise is treated as relative to the loss (pooled over scales as a fraction of each scale's best loss),
which is how run-to-run noise behaves across model sizes.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

from ..axes import to_axis
from .table import seed_noise

WINDOW = 2  # grid steps each side of the best config: local enough that the surface is close to a quadratic


@dataclass(frozen=True)
class Noise:
    """The measured noise of one config's loss, relative to its scale's best loss, and where it came from."""

    relative: float  # std of one config's loss / the scale's best loss (0 when nothing measured it)
    dof: int
    surface: dict[str, dict[str, float | int | None]]  # per scale: own std and dof from the surface scatter
    seeds: dict[str, Any] | None  # `seed_noise(table)`
    best_loss: dict[str, float]

    def config_std(self, scale: str) -> float:
        """Std of one config's loss at `scale`."""
        return self.relative * self.best_loss[scale]

    def difference_std(self, scale: str) -> float:
        """Std of the difference between two configs' losses at `scale`."""
        return math.sqrt(2.0) * self.config_std(scale)

    @property
    def sources(self) -> list[str]:
        """What measured the noise: "surface" (scatter about the local fits), "seeds", both or neither."""
        return [name for name, present in (("surface", self._surface_dof() > 0), ("seeds", self.seeds)) if present]

    def as_dict(self) -> dict[str, Any]:
        return {
            "relative_std": self.relative,
            "dof": self.dof,
            "sources": self.sources,
            "per_scale": {
                scale: {"config_std": self.config_std(scale), "difference_std": self.difference_std(scale),
                        "surface_std": self.surface.get(scale, {}).get("std"),
                        "surface_dof": self.surface.get(scale, {}).get("dof", 0)}
                for scale in self.best_loss
            },
            # kept at the top level: the seed-based figures earlier readers used
            **({"std": self.seeds["std"], "paired_std": self.seeds["paired_std"]} if self.seeds else {}),
            "seeds": self.seeds,
        }

    def _surface_dof(self) -> int:
        return sum(int(s.get("dof") or 0) for s in self.surface.values())


def measure_noise(table: pd.DataFrame, configs: pd.DataFrame, best_loss: pd.Series, swept: list[str]) -> Noise:
    """Pool the surface scatter of every scale and the seed noise (both relative to the best loss)."""
    surface = {str(scale): surface_scatter(rows, swept) for scale, rows in configs.groupby("scale", sort=False)}
    squares = sum((s["std"] / best_loss[scale]) ** 2 * s["dof"] for scale, s in surface.items() if s["dof"])
    dof = sum(s["dof"] for s in surface.values())
    seeds = seed_noise(table)
    if seeds is not None:
        # The noise of a compared config: the paired one under common random numbers (per config, / sqrt 2).
        per_config = seeds["paired_std"] / math.sqrt(2.0) if seeds["paired_std"] else seeds["std"]
        squares += (per_config / float(best_loss.mean())) ** 2 * seeds["dof"]
        dof += seeds["dof"]
    relative = math.sqrt(squares / dof) if dof else 0.0
    return Noise(relative, int(dof), surface, seeds, {str(k): float(v) for k, v in best_loss.items()})


def surface_scatter(configs: pd.DataFrame, swept: list[str]) -> dict[str, float | int | None]:
    """Residual std (and its degrees of freedom) of one scale's config losses about a local quadratic."""
    finite = configs[configs["loss"].notna()]
    if finite.empty:
        return {"std": None, "dof": 0}
    center = finite.loc[finite["loss"].idxmin()]
    near = pd.Series(True, index=finite.index)
    axes = {}
    for h in swept:
        grid = np.sort(configs[h].unique())
        if len(grid) < 2:
            continue
        index = np.searchsorted(grid, finite[h].to_numpy())
        near &= np.abs(index - np.searchsorted(grid, center[h])) <= WINDOW
        axes[h] = to_axis(h, finite[h]) - float(to_axis(h, center[h]))
    local = finite[near]
    design = {"const": np.ones(len(local))}
    for h, x in axes.items():
        x = np.asarray(x)[near.to_numpy()]
        design[h] = x
        design[f"{h}^2"] = x**2
    for g, h in itertools.combinations(axes, 2):
        design[f"{g}*{h}"] = design[g] * design[h]
    frame = pd.DataFrame(design, index=local.index)
    frame = frame.loc[:, (np.ptp(frame.to_numpy(), axis=0) > 0) | (frame.columns == "const")]
    if len(local) <= np.linalg.matrix_rank(frame.to_numpy()):
        return {"std": None, "dof": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rank-deficient window is fine: the residual dof use the rank
        fit = sm.OLS(local["loss"].to_numpy(float), frame).fit()
    return {"std": float(math.sqrt(max(fit.scale, 0.0))), "dof": int(round(fit.df_resid))}
