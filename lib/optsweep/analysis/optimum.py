"""The loss along one hyperparameter at one scale (a slice), the curve fitted to it, the optimum that curve
implies (with its standard error) and what another value costs on it (regret, with its uncertainty).

Each slice is fitted on the hyperparameter's natural axis (`axes`) by a local quadratic (least squares)
over the best run and up to `REACH` finished neighbours on each side; a diverged run censors (it is never a
loss) and the fit stops short of it, so next to a divergence cliff it is one-sided. The optimum is the
vertex of that quadratic when it is convex and the vertex lies within one grid step of the runs it was
fitted to (beyond them it is flagged `extrapolated`); otherwise the measured best stands, as an
observation censored at the grid edge when it sits there. A value inside the fitted window costs what the
quadratic says; one between farther runs, what those runs measured; one beyond every run, what the
quadratic extrapolates, flagged, with its standard error, never clamped to the nearest run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..axes import from_axis, to_axis
from ..params.sections import AnalysisSettings
from ..runs.trainer import warmup_fits
from .curve import Curve
from .noise import Noise, measure_noise
from .surface import Surface
from .table import config_losses, scales_frame, swept_hparams

# lr x width^power stays constant under each width rule; "none" first so it wins ties (fewest assumptions).
WIDTH_RULES: dict[str, float] = {"none": 0.0, "inverse_width": 1.0, "inverse_sqrt_width": 0.5}
# A pair of scales "differs only in data" when N and width agree within this relative tolerance (and
# likewise for tokens), so budgets rounded to whole steps still pair up.
SAME_SIZE_RTOL = 0.01
REACH = 2  # finished neighbours each side of the best run in the local quadratic (and the local surface)
# A vertex is only as good as the curvature it divides by: below this many standard errors of the curvature
# the landscape is flat within the noise there, and the measured best stands.
CURVATURE_Z = 2.5


@dataclass(frozen=True)
class Slice:
    """Losses of the runs that share every other hyperparameter with a scale's best run (NaN = diverged),
    sorted on the natural axis, and every value of the hyperparameter run at that scale."""

    hparam: str
    values: np.ndarray
    losses: np.ndarray
    grid: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return to_axis(self.hparam, self.values)

    @property
    def best_index(self) -> int:
        return int(np.nanargmin(self.losses))

    @property
    def best_loss(self) -> float:
        return float(np.nanmin(self.losses))

    @property
    def step(self) -> float:
        """The mean grid step on the natural axis (1 for a single value)."""
        steps = np.abs(np.diff(np.sort(to_axis(self.hparam, self.grid))))
        return float(np.mean(steps)) if len(steps) else 1.0


@dataclass(frozen=True)
class Regret:
    """What a value costs at a scale above that scale's fitted optimum, and how well that is known."""

    value: float
    stderr: float
    extrapolated: bool  # beyond every run of the slice
    diverges: bool  # at or past a diverged run: at least `value`, likely a diverged run

    def as_dict(self) -> dict[str, Any]:
        return {"regret": self.value, "regret_stderr": self.stderr, "extrapolated": self.extrapolated,
                "diverges": self.diverges}


@dataclass(frozen=True)
class Optimum:
    """A scale's optimum of one hyperparameter: `refined` on the natural axis' scale with its `stderr` (on
    the natural axis). `estimate` is "fitted" (the local quadratic's vertex) or "measured" (the best run, when
    no convex fit places it); `edge` is "above" / "below" for a measured best at the top / bottom of the grid,
    a censored observation whose true optimum lies beyond `bound`."""

    grid_value: float
    refined: float
    edge: str | None
    loss: float
    refinement: str
    estimate: str
    stderr: float
    bound: float | None = None
    extrapolated: bool = False

    @property
    def at_edge(self) -> bool:
        return self.edge is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "grid_value": self.grid_value, "refined": self.refined, "estimate": self.estimate,
            "stderr": self.stderr, "at_edge": self.at_edge, "edge": self.edge, "bound": self.bound, "loss": self.loss,
            "refinement": self.refinement, "extrapolated": self.extrapolated,
        }


@dataclass(frozen=True)
class SliceFit:
    """A slice with its curve (None: fewer than three finished runs around the best) and optimum."""

    slice: Slice
    curve: Curve | None
    optimum: Optimum
    noise: float  # std of one config's loss at this scale

    def regret(self, value: float) -> Regret:
        x = float(to_axis(self.slice.hparam, value))
        xs, losses = self.slice.x, self.slice.losses
        finite = ~np.isnan(losses)
        low, high = float(xs[finite].min()), float(xs[finite].max())
        slack = 1e-9 * max(1.0, high - low)
        past = ((xs <= x + slack) & (xs > high)) | ((xs >= x - slack) & (xs < low))
        diverges = bool(np.any(np.isnan(losses) & past))
        outside = x < low - slack or x > high + slack
        fitted = self.optimum.estimate == "fitted"
        if fitted and (outside or self._in_window(x, slack)):
            value_, stderr = self.curve.regret(x)
            return Regret(value_, stderr, outside, diverges)
        # between farther runs (or with no trusted curve): what the runs measured, against the optimum's loss
        nearest = float(np.interp(x, xs[finite], losses[finite]))
        base = self._fitted_min() if fitted else self.optimum.loss
        return Regret(max(nearest - base, 0.0), self._config_noise(), outside, diverges)

    def _fitted_min(self) -> float:
        assert self.curve is not None
        c0, c1, c2 = self.curve.coefficients
        return float(c0 - c1**2 / (4 * c2))

    def _in_window(self, x: float, slack: float) -> bool:
        assert self.curve is not None
        return self.curve.window[0] - slack <= x <= self.curve.window[1] + slack

    def _config_noise(self) -> float:
        """The error of a measured loss minus the best measured one: the noise of a difference."""
        return math.sqrt(2.0) * self.noise


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
    rows = configs[same]
    rows = rows.iloc[np.argsort(to_axis(hparam, rows[hparam].to_numpy(float)), kind="stable")]
    grid = np.sort(configs[hparam].unique().astype(float))
    return Slice(hparam, rows[hparam].to_numpy(float), rows["loss"].to_numpy(float), grid)


def fit_slice(slice_: Slice, noise: float) -> SliceFit:
    """The local quadratic of a slice and the optimum it implies (`noise`: std of one config's loss). Where
    the landscape bends more than a parabola over `REACH` runs each side (the fit misses them beyond the
    noise, or is not convex), the window narrows to one run each side: a model that can bend."""
    for reach in range(REACH, 0, -1):
        window = _window(slice_, reach)
        curve = _quadratic(slice_.x[window], slice_.losses[window], noise) if len(window) >= 3 else None
        if curve is None or (curve.convex and not curve.misfits(slice_.best_loss)):
            break
    why = f"vertex of a quadratic through {len(window)} runs"
    return SliceFit(slice_, curve, _optimum(slice_, curve, why, noise), noise)


def fit_on_surface(configs: pd.DataFrame, slice_: Slice, swept: list[str], noise: float) -> SliceFit | None:
    """On a full 2-D grid, the slice's hyperparameter fitted on the local quadratic surface over it and a
    partner (`Surface`): its profile (the partner re-optimised at each value) is the curve. None when no
    partner has the complete, finished 3 x 3 block around the best that a surface needs, or the surface has
    no minimum there or misses its runs by far more than the noise (the slice's own fit then stands)."""
    hparam = slice_.hparam
    best = configs[(configs[hparam] == slice_.values[slice_.best_index]) & (configs["loss"] == slice_.best_loss)]
    for partner in (h for h in swept if h != hparam):
        surface = Surface.around(configs, best.iloc[0], hparam, partner, swept, noise)
        if surface is not None and not surface.profile().misfits(slice_.best_loss):
            curve = surface.profile()
            why = f"local surface over {hparam} x {partner} ({surface.runs} runs)"
            return SliceFit(slice_, curve, _optimum(slice_, curve, why, noise), noise)
    return None


def _window(slice_: Slice, reach: int) -> list[int]:
    """The best run and up to `reach` finished runs on each side, stopping at a diverged one."""
    i, losses = slice_.best_index, slice_.losses
    window = [i]
    for direction in (-1, 1):
        j = i + direction
        while 0 <= j < len(losses) and abs(j - i) <= reach and not np.isnan(losses[j]):
            window.append(j)
            j += direction
    if len(window) < 3:  # one side is short (an edge or a cliff): reach further on the other
        far = sorted(range(len(losses)), key=lambda j: abs(j - i))
        extra = [j for j in far if j not in window and _reachable(losses, i, j)]
        window += extra[: 3 - len(window)]
    return sorted(window)


def _reachable(losses: np.ndarray, i: int, j: int) -> bool:
    """Whether every run from i to j (inclusive) finished."""
    low, high = sorted((i, j))
    return not np.isnan(losses[low:high + 1]).any()


def _quadratic(x: np.ndarray, y: np.ndarray, noise: float) -> Curve:
    center = float(x[np.argmin(y)])
    u = x - center
    design = np.stack([np.ones_like(u), u, u**2], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    rss = float(np.sum((y - design @ coefficients) ** 2))
    return Curve(coefficients, np.linalg.pinv(design.T @ design), center, (float(x.min()), float(x.max())), noise,
                 rss, len(x) - 3)


def _optimum(slice_: Slice, curve: Curve | None, fitted_by: str, noise: float) -> Optimum:
    i = slice_.best_index
    grid_value, loss = float(slice_.values[i]), float(slice_.losses[i])
    step = slice_.step
    if curve is not None and curve.misfits(loss):
        why = "measured best: the quadratic through its neighbours misses them by far more than the noise"
    elif curve is not None and curve.convex and curve.curvature_z >= CURVATURE_Z:
        low, high = curve.window
        vertex = curve.vertex
        if low - step <= vertex <= high + step and not _past_divergence(slice_, vertex):
            extrapolated = not low <= vertex <= high
            stderr = min(curve.vertex_stderr(), high - low + 2 * step)
            why = fitted_by + (", beyond them" if extrapolated else "")
            return Optimum(grid_value, float(from_axis(slice_.hparam, vertex)), None, loss, why, "fitted",
                           stderr, extrapolated=extrapolated)
        why = "measured best: the quadratic's vertex lies past a diverged run or over a grid step beyond the runs"
    else:
        why = "measured best: " + ("fewer than three finished runs around it" if curve is None
                                   else "the quadratic through its neighbours is not convex" if not curve.convex
                                   else f"the curvature is within {CURVATURE_Z:g} standard errors of flat")
    edge, bound = _edge(slice_, grid_value)
    return Optimum(grid_value, grid_value, edge, loss, why, "measured", _measured_stderr(slice_, noise), bound)


def _measured_stderr(slice_: Slice, noise: float) -> float:
    """A measured best's error: a grid step / sqrt 12 when its neighbours are worse beyond the noise of a
    difference (CURVATURE_Z of them); else the landscape is flat within the noise there and the best could
    be any finished run: the std of a uniform draw from them."""
    i, losses, step = slice_.best_index, slice_.losses, slice_.step
    neighbours = [losses[j] for j in (i - 1, i + 1) if 0 <= j < len(losses) and not np.isnan(losses[j])]
    if neighbours and min(neighbours) - losses[i] > CURVATURE_Z * math.sqrt(2) * noise:
        return step / math.sqrt(12)
    finished = slice_.x[~np.isnan(losses)]
    return max(float(np.std(finished)), step / math.sqrt(12))


def _past_divergence(slice_: Slice, x: float) -> bool:
    """Whether x lies at or beyond a diverged run, seen from the best run."""
    best = slice_.x[slice_.best_index]
    diverged = slice_.x[np.isnan(slice_.losses)]
    return bool(np.any(((diverged > best) & (x >= diverged)) | ((diverged < best) & (x <= diverged))))


def _edge(slice_: Slice, grid_value: float) -> tuple[str | None, float | None]:
    """Whether a measured best sits at the top / bottom of its scale's grid, and the censoring bound: the
    midpoint (natural axis) to its neighbour, since the edge run beat that neighbour."""
    grid = slice_.grid
    if len(grid) < 2 or grid_value not in (grid[0], grid[-1]):
        return None, None
    top = grid_value == grid[-1]
    neighbour = grid[-2] if top else grid[1]
    middle = (to_axis(slice_.hparam, grid_value) + to_axis(slice_.hparam, neighbour)) / 2
    return ("above" if top else "below"), float(from_axis(slice_.hparam, middle))


@dataclass
class Landscape:
    """Slices, fits and optima of some hyperparameters at every scale of a run table, and its noise."""

    scales: pd.DataFrame
    configs: pd.DataFrame
    fits: dict[str, dict[str, SliceFit]]
    noise: Noise

    def __post_init__(self) -> None:
        self._info = self.scales.to_dict("index")  # plain dicts: looked up for every pair of scales

    @classmethod
    def from_table(cls, table: pd.DataFrame, hparams: list[str], settings: AnalysisSettings | None = None) -> Landscape:
        """`table` is validated and its blown-up runs already marked (`mark_blown_up`)."""
        configs = config_losses(table)
        swept = swept_hparams(table)
        scales = scales_frame(table, configs)
        noise = measure_noise(table, configs, scales["best_loss"], swept, settings)
        fits: dict[str, dict[str, SliceFit]] = {h: {} for h in hparams}
        for scale, group in configs.groupby("scale", sort=False):
            for h in hparams:
                found = find_slice(group, h, swept)
                if found is not None:
                    std = noise.config_std(scale)
                    fits[h][scale] = fit_on_surface(group, found, swept, std) or fit_slice(found, std)
        return cls(scales, configs, fits, noise)

    @property
    def slices(self) -> dict[str, dict[str, Slice]]:
        return {h: {scale: fit.slice for scale, fit in fits.items()} for h, fits in self.fits.items()}

    @property
    def optima(self) -> dict[str, dict[str, Optimum]]:
        return {h: {scale: fit.optimum for scale, fit in fits.items()} for h, fits in self.fits.items()}

    def pairs(self, hparam: str) -> list[tuple[str, str]]:
        """Ordered pairs of distinct scales where `hparam` was swept at both."""
        names = list(self.fits[hparam])
        return [(a, b) for a in names for b in names if a != b]

    def kind(self, a: str, b: str) -> str:
        """"data" when only the token budget differs, "model" when only the model does, else "both"."""
        sa, sb = self._info[a], self._info[b]
        same_model = sa["width"] == sb["width"] and math.isclose(sa["n_params"], sb["n_params"], rel_tol=SAME_SIZE_RTOL)
        same_data = math.isclose(sa["tokens"], sb["tokens"], rel_tol=SAME_SIZE_RTOL)
        if same_model and same_data:
            return "same"
        return "data" if same_model else "model" if same_data else "both"

    def width(self, scale: str) -> float:
        return float(self._info[scale]["width"])

    def transferred(self, hparam: str, a: str, b: str, power: float = 0.0) -> float:
        """Scale a's optimum carried to scale b, keeping value x width^power constant (lr under a width rule)."""
        return self.fits[hparam][a].optimum.refined * (self.width(a) / self.width(b)) ** power

    def to_reference(self, value: float, scale: str, power: float, reference_width: int | None) -> float:
        """A value run at `scale`, expressed at the reference width (unchanged when power is 0)."""
        return value * (self.width(scale) / reference_width) ** power if power else value

    def from_reference(self, value: float, scale: str, power: float, reference_width: int | None) -> float:
        return value / (self.width(scale) / reference_width) ** power if power else value

    def can_run(self, hparam: str, value: float, scale: str) -> bool:
        """Whether every run of `scale` could train at `value` (the trainer's warmup rule, on its shortest
        run); a table without steps sets no bound."""
        shortest = self._info[scale]["shortest"]
        return hparam != "warmup" or not np.isfinite(shortest) or warmup_fits(value, shortest)

    def shortest_run(self, scales: Iterable[str]) -> int:
        """The fewest steps of any run at these scales."""
        return int(min(self._info[s]["shortest"] for s in scales))

    def regret_of(self, hparam: str, value: float, scale: str) -> Regret:
        return self.fits[hparam][scale].regret(value)

    def regret(self, hparam: str, value: float, scale: str) -> tuple[float, bool]:
        """Regret of `value` at `scale` and whether it lies beyond the scale's runs (extrapolated)."""
        found = self.regret_of(hparam, value, scale)
        return found.value, found.extrapolated
