"""The loss along one hyperparameter at one scale (a slice), the optimum it implies (with its standard
error), and what it costs to use another scale's optimum there (regret). Each hyperparameter is studied on
its natural axis (`axes`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..axes import from_axis, to_axis
from .noise import Noise, measure_noise
from .table import config_losses, scales_frame, swept_hparams

# lr x width^power stays constant under each width rule; "none" first so it wins ties (fewest assumptions).
WIDTH_RULES: dict[str, float] = {"none": 0.0, "inverse_width": 1.0, "inverse_sqrt_width": 0.5}
# A pair of scales "differs only in data" when N and width agree within this relative tolerance (and
# likewise for tokens), so budgets rounded to whole steps still pair up.
SAME_SIZE_RTOL = 0.01


@dataclass(frozen=True)
class Slice:
    """Losses of the runs that share every other hyperparameter with a scale's best run (NaN = diverged),
    and every value of the hyperparameter run at that scale (a value missing from the slice is no edge)."""

    hparam: str
    values: np.ndarray
    losses: np.ndarray
    grid: np.ndarray

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
    """The best measured value and, where the losses around it support one, a refined estimate.

    `estimate` says which one `refined` holds ("refined" or "measured"); `stderr` is its standard error on
    the natural axis; `edge` is "above" / "below" when the best run sits at the top / bottom of the grid,
    else None. An edge optimum is a censored observation: the true optimum lies beyond `bound`, the midpoint
    (natural axis) between the edge value and its neighbour, since the edge run beat that neighbour.
    """

    grid_value: float
    refined: float
    edge: str | None
    loss: float
    refinement: str
    estimate: str
    stderr: float
    bound: float | None = None

    @property
    def at_edge(self) -> bool:
        return self.edge is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "grid_value": self.grid_value, "refined": self.refined, "estimate": self.estimate,
            "stderr": self.stderr, "at_edge": self.at_edge, "edge": self.edge, "bound": self.bound, "loss": self.loss,
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
    grid = np.sort(configs[hparam].unique().astype(float))
    return Slice(hparam, rows[hparam].to_numpy(float), rows["loss"].to_numpy(float), grid)


def find_optimum(slice_: Slice, noise: float = 0.0) -> Optimum:
    """Best measured value, refined by a least-squares parabola (natural axis) through up to two finite runs
    on each side, with the vertex's standard error given the noise of one config's loss (`noise`).

    The refinement never contradicts the measurements: it is kept only when the best is interior with
    finite measured neighbours, the parabola is convex and its vertex lies strictly between the
    neighbours (each of which was measured worse than the best). Otherwise the measured best stands, with
    the grid resolution as its standard error, and `refinement` says why.
    """
    values, losses, i = slice_.values, slice_.losses, slice_.best_index
    grid_value, loss = float(values[i]), float(losses[i])
    x = to_axis(slice_.hparam, values)
    steps = np.abs(np.diff(to_axis(slice_.hparam, slice_.grid)))
    resolution = float(np.mean(steps)) / math.sqrt(12) if len(steps) else 0.0  # uniform within one grid cell

    def measured(why: str, edge: str | None = None, bound: float | None = None) -> Optimum:
        return Optimum(grid_value, grid_value, edge, loss, f"measured best: {why}", "measured", resolution, bound)

    if len(slice_.grid) >= 2 and grid_value in (slice_.grid[0], slice_.grid[-1]):
        top = grid_value == slice_.grid[-1]
        neighbour = slice_.grid[-2] if top else slice_.grid[1]
        middle = (to_axis(slice_.hparam, grid_value) + to_axis(slice_.hparam, neighbour)) / 2
        return measured("at the grid edge", "above" if top else "below", float(from_axis(slice_.hparam, middle)))
    if i == 0 or i == len(values) - 1:
        return measured("a neighbouring grid value was not run at this setting")
    if np.isnan(losses[i - 1]) or np.isnan(losses[i + 1]):
        return measured("a neighbour diverged")
    window = [j for j in range(i - 2, i + 3) if 0 <= j < len(values) and not np.isnan(losses[j])]
    u = x[window] - x[i]
    design = np.stack([u**2, u, np.ones_like(u)], axis=1)
    (curvature, slope, _), *_ = np.linalg.lstsq(design, losses[window], rcond=None)
    if curvature <= 0:
        return measured("the parabola through its neighbours is not convex")
    vertex = -slope / (2 * curvature)
    low, high = sorted((x[i - 1] - x[i], x[i + 1] - x[i]))
    if not low < vertex < high:
        return measured("the parabola's vertex lies at or beyond a neighbour measured worse")
    # delta method: d vertex / d (curvature, slope) = (slope / (2 c^2), -1 / (2 c))
    covariance = noise**2 * np.linalg.pinv(design.T @ design)[:2, :2]
    gradient = np.array([slope / (2 * curvature**2), -1 / (2 * curvature)])
    stderr = float(np.sqrt(max(gradient @ covariance @ gradient, 0.0)))
    stderr = min(max(stderr, 1e-3 * resolution), (high - low) / 2)
    refined = float(from_axis(slice_.hparam, x[i] + vertex))
    return Optimum(grid_value, refined, None, loss, f"parabola through {len(window)} runs", "refined", stderr)


def find_optimum_on_surface(
    configs: pd.DataFrame, slice_: Slice, swept: list[str], noise: float = 0.0
) -> Optimum | None:
    """On a full 2-D grid, the optimum of the slice's hyperparameter from the local quadratic surface over it
    and a partner hyperparameter (up to 2 grid steps either side of the best in both), or None when no
    partner has the complete 3 x 3 block of finite runs around the best that a surface needs.

    The same rule as on a slice: the vertex must lie strictly between the best run's neighbours along both
    axes, else the measured best stands. An edge optimum is left to the slice (None)."""
    hparam, i = slice_.hparam, slice_.best_index
    best_value = slice_.values[i]
    if best_value in (slice_.grid[0], slice_.grid[-1]):
        return None
    center = configs[(configs[hparam] == best_value) & (configs["loss"] == slice_.losses[i])].iloc[0]
    for partner in (h for h in swept if h != hparam):
        block = _block(configs, center, hparam, partner, swept)
        if block is not None:
            return _surface_vertex(block, center, hparam, partner, slice_, noise)
    return None


def _block(
    configs: pd.DataFrame, center: pd.Series, hparam: str, partner: str, swept: list[str]
) -> pd.DataFrame | None:
    """The runs within 2 grid steps of `center` along `hparam` and `partner` (every other hyperparameter at
    the center's value), or None unless the 3 x 3 core around the center was run and finished."""
    same = np.ones(len(configs), dtype=bool)
    for h in swept:
        if h not in (hparam, partner):
            same &= (configs[h] == center[h]).to_numpy()
    rows = configs[same].copy()
    for h in (hparam, partner):
        grid = np.sort(configs[h].unique())
        rows[f"_{h}_step"] = np.searchsorted(grid, rows[h]) - np.searchsorted(grid, center[h])
    near = rows[(rows[f"_{hparam}_step"].abs() <= 2) & (rows[f"_{partner}_step"].abs() <= 2)]
    core = near[(near[f"_{hparam}_step"].abs() <= 1) & (near[f"_{partner}_step"].abs() <= 1)]
    if len(core) < 9 or core["loss"].isna().any():
        return None
    return near[near["loss"].notna()]


def _surface_vertex(
    block: pd.DataFrame, center: pd.Series, hparam: str, partner: str, slice_: Slice, noise: float
) -> Optimum:
    u = to_axis(hparam, block[hparam]) - float(to_axis(hparam, center[hparam]))
    v = to_axis(partner, block[partner]) - float(to_axis(partner, center[partner]))
    design = np.stack([np.ones_like(u), u, v, u**2, v**2, u * v], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, block["loss"].to_numpy(float), rcond=None)

    def vertex(c: np.ndarray) -> np.ndarray:
        hessian = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
        return np.linalg.solve(hessian, -c[1:3]) if np.linalg.det(hessian) != 0 else np.array([np.inf, np.inf])

    grid_value, loss = float(center[hparam]), float(center["loss"])
    resolution = float(np.mean(np.abs(np.diff(to_axis(hparam, slice_.grid))))) / math.sqrt(12)
    hessian = np.array([[2 * coefficients[3], coefficients[5]], [coefficients[5], 2 * coefficients[4]]])
    found = vertex(coefficients)
    # the nearest runs either side of the center along each axis (the 3 x 3 core guarantees both exist)
    steps = {h: (float(x[x < 0].max()), float(x[x > 0].min()))
             for h, x in ((hparam, u[np.abs(v) < 1e-12]), (partner, v[np.abs(u) < 1e-12]))}
    inside = all(steps[h][0] < found[k] < steps[h][1] for k, h in enumerate((hparam, partner)))
    if not np.all(np.linalg.eigvalsh(hessian) > 0) or not inside:
        why = "the local surface over " + partner + " has no minimum strictly between the best run's neighbours"
        return Optimum(grid_value, grid_value, None, loss, f"measured best: {why}", "measured", resolution)
    # delta method, the gradient of the vertex's first coordinate by finite differences
    covariance = noise**2 * np.linalg.pinv(design.T @ design)
    gradient = np.array([
        (vertex(coefficients + e)[0] - vertex(coefficients - e)[0]) / (2 * 1e-7) for e in np.eye(6) * 1e-7
    ])
    stderr = float(np.sqrt(max(gradient @ covariance @ gradient, 0.0)))
    stderr = min(max(stderr, 1e-3 * resolution), (steps[hparam][1] - steps[hparam][0]) / 2)
    refined = float(from_axis(hparam, float(to_axis(hparam, grid_value)) + found[0]))
    return Optimum(grid_value, refined, None, loss, f"local surface over {hparam} x {partner} ({len(block)} runs)",
                   "refined", stderr)


@dataclass
class Landscape:
    """Slices and optima of some hyperparameters at every scale of a run table."""

    scales: pd.DataFrame
    configs: pd.DataFrame
    slices: dict[str, dict[str, Slice]]
    optima: dict[str, dict[str, Optimum]]
    noise: Noise

    def __post_init__(self) -> None:
        self._info = self.scales.to_dict("index")  # plain dicts: looked up for every pair of scales

    @classmethod
    def from_table(cls, table: pd.DataFrame, hparams: list[str]) -> Landscape:
        """`table` is validated and its blown-up runs already marked (`mark_blown_up`)."""
        configs = config_losses(table)
        swept = swept_hparams(table)
        scales = scales_frame(table, configs)
        noise = measure_noise(table, configs, scales["best_loss"], swept)
        slices: dict[str, dict[str, Slice]] = {h: {} for h in hparams}
        optima: dict[str, dict[str, Optimum]] = {h: {} for h in hparams}
        for scale, group in configs.groupby("scale", sort=False):
            for h in hparams:
                found = find_slice(group, h, swept)
                if found is not None:
                    slices[h][scale] = found
                    on_surface = find_optimum_on_surface(group, found, swept, noise.config_std(scale))
                    optima[h][scale] = on_surface or find_optimum(found, noise.config_std(scale))
        return cls(scales, configs, slices, optima, noise)

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
