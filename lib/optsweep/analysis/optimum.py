"""The loss along one hyperparameter at one scale (a slice), the optimum it implies, and what it costs to
use another scale's optimum there (regret).

Each hyperparameter is studied on its natural axis, where the loss near the optimum is close to a
parabola: log for lr, eps and batch size, log(1 + warmup) (a log axis that allows warmup 0), log(1 - beta)
for the betas, linear for ratios, weight decay and clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .table import config_losses, scales_frame, swept_hparams

LOG_AXIS = ("lr", "eps", "batch_size")
LOG1P_AXIS = ("warmup",)
BETA_AXIS = ("beta1", "beta2")
# lr x width^power stays constant under each width rule; "none" first so it wins ties (fewest assumptions).
WIDTH_RULES: dict[str, float] = {"none": 0.0, "inverse_width": 1.0, "inverse_sqrt_width": 0.5}
# A pair of scales "differs only in data" when N and width agree within this relative tolerance (and
# likewise for tokens), so budgets rounded to whole steps still pair up.
SAME_SIZE_RTOL = 0.01


def to_axis(hparam: str, values: Any) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if hparam in LOG_AXIS:
        return np.log(values)
    if hparam in LOG1P_AXIS:
        return np.log1p(values)
    if hparam in BETA_AXIS:
        return np.log1p(-values)
    return values


def from_axis(hparam: str, x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if hparam in LOG_AXIS:
        return np.exp(x)
    if hparam in LOG1P_AXIS:
        return np.expm1(x)
    if hparam in BETA_AXIS:
        return -np.expm1(x)
    return x


@dataclass(frozen=True)
class Slice:
    """Losses of the runs that share every other hyperparameter with a scale's best run (NaN = diverged)."""

    hparam: str
    values: np.ndarray
    losses: np.ndarray

    @property
    def best_index(self) -> int:
        return int(np.nanargmin(self.losses))

    @property
    def best_loss(self) -> float:
        return float(np.nanmin(self.losses))

    def regret(self, value: float) -> tuple[float, bool]:
        """Loss above this slice's best at `value` (linear in the natural axis between finite runs; diverged
        runs are left out) and whether `value` lies outside them (then the nearest run's loss, a bound)."""
        finite = ~np.isnan(self.losses)
        xs = to_axis(self.hparam, self.values[finite])
        order = np.argsort(xs)  # the beta axis log(1 - beta) runs backwards
        xs, losses = xs[order], self.losses[finite][order]
        x = float(to_axis(self.hparam, value))
        slack = 1e-9 * max(1.0, float(np.ptp(xs)))
        outside = bool(x < xs[0] - slack or x > xs[-1] + slack)
        return float(np.interp(x, xs, losses)) - self.best_loss, outside


@dataclass(frozen=True)
class Optimum:
    """The best grid value and, where the parabola through its neighbourhood allows, a refined estimate."""

    grid_value: float
    refined: float
    at_edge: bool
    loss: float
    refinement: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "grid_value": self.grid_value,
            "refined": self.refined,
            "at_edge": self.at_edge,
            "loss": self.loss,
            "refinement": self.refinement,
        }


def find_slice(configs: pd.DataFrame, hparam: str, swept: list[str]) -> Slice | None:
    """The slice of `hparam` at one scale: the runs equal in every other swept hyperparameter to the best run
    that has neighbours along `hparam`. Works for 1-D slices and full grids alike (None: never varied)."""
    others = [h for h in swept if h != hparam]
    if others:
        varied = configs.groupby(others, sort=False)[hparam].transform("nunique") >= 2
    else:
        varied = pd.Series(configs[hparam].nunique() >= 2, index=configs.index)
    candidates = configs[varied & configs["loss"].notna()]
    if candidates.empty:
        return None
    center = candidates.loc[candidates["loss"].idxmin()]
    same = np.ones(len(configs), dtype=bool)
    for h in others:
        same &= (configs[h] == center[h]).to_numpy()
    rows = configs[same].sort_values(hparam)
    return Slice(hparam, rows[hparam].to_numpy(float), rows["loss"].to_numpy(float))


def find_optimum(slice_: Slice) -> Optimum:
    """Best grid value, refined by a least-squares parabola through up to two finite runs on each side.

    Refined only when the best is interior with finite neighbours and the parabola is convex; the vertex is
    kept within one grid step of the best (a parabola is only trusted that close).
    """
    values, losses, i = slice_.values, slice_.losses, slice_.best_index
    grid_value, loss = float(values[i]), float(losses[i])
    if i == 0 or i == len(values) - 1:
        return Optimum(grid_value, grid_value, True, loss, "grid value: best at the grid edge")
    if np.isnan(losses[i - 1]) or np.isnan(losses[i + 1]):
        return Optimum(grid_value, grid_value, False, loss, "grid value: a neighbour diverged")
    window = [j for j in range(i - 2, i + 3) if 0 <= j < len(values) and not np.isnan(losses[j])]
    x = to_axis(slice_.hparam, values)
    curvature, slope, _ = np.polyfit(x[window] - x[i], losses[window], 2)
    if curvature <= 0:
        return Optimum(grid_value, grid_value, False, loss, "grid value: parabola not convex")
    vertex = float(np.clip(-slope / (2 * curvature), *sorted((x[i - 1] - x[i], x[i + 1] - x[i]))))
    refined = float(from_axis(slice_.hparam, x[i] + vertex))
    return Optimum(grid_value, refined, False, loss, f"parabola through {len(window)} runs")


@dataclass
class Landscape:
    """Slices and optima of some hyperparameters at every scale of a run table."""

    scales: pd.DataFrame
    configs: pd.DataFrame
    slices: dict[str, dict[str, Slice]]
    optima: dict[str, dict[str, Optimum]]

    def __post_init__(self) -> None:
        self._info = self.scales.to_dict("index")  # plain dicts: looked up for every pair of scales

    @classmethod
    def from_table(cls, table: pd.DataFrame, hparams: list[str]) -> Landscape:
        configs = config_losses(table)
        swept = swept_hparams(table)
        slices: dict[str, dict[str, Slice]] = {h: {} for h in hparams}
        for scale, group in configs.groupby("scale", sort=False):
            for h in hparams:
                found = find_slice(group, h, swept)
                if found is not None:
                    slices[h][scale] = found
        optima = {h: {scale: find_optimum(s) for scale, s in by_scale.items()} for h, by_scale in slices.items()}
        return cls(scales_frame(table, configs), configs, slices, optima)

    def pairs(self, hparam: str) -> list[tuple[str, str]]:
        """Ordered pairs of distinct scales where `hparam` was swept at both."""
        names = list(self.slices[hparam])
        return [(a, b) for a in names for b in names if a != b]

    def kind(self, a: str, b: str) -> str:
        """"data" when only the token budget differs, "model" when only the model does, else "both"."""
        sa, sb = self._info[a], self._info[b]
        same_model = sa["width"] == sb["width"] and math.isclose(sa["n_params"], sb["n_params"], rel_tol=SAME_SIZE_RTOL)
        same_data = math.isclose(sa["tokens"], sb["tokens"], rel_tol=SAME_SIZE_RTOL)
        if same_model and same_data:
            return "same"
        return "data" if same_model else "model" if same_data else "both"

    def _width_ratio(self, scale: str, width: float) -> float:
        return self._info[scale]["width"] / width

    def transferred(self, hparam: str, a: str, b: str, power: float = 0.0) -> float:
        """Scale a's optimum carried to scale b, keeping value x width^power constant (lr under a width rule)."""
        return self.optima[hparam][a].refined * self._width_ratio(a, self._info[b]["width"]) ** power

    def to_reference(self, value: float, scale: str, power: float, reference_width: int | None) -> float:
        """A value run at `scale`, expressed at the reference width (unchanged when power is 0)."""
        return value * self._width_ratio(scale, reference_width) ** power if power else value

    def from_reference(self, value: float, scale: str, power: float, reference_width: int | None) -> float:
        return value / self._width_ratio(scale, reference_width) ** power if power else value

    def regret(self, hparam: str, value: float, scale: str) -> tuple[float, bool]:
        return self.slices[hparam][scale].regret(value)
