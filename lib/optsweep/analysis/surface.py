"""A local quadratic surface over two hyperparameters on a full 2-D grid, and its profile along one of them
(the other re-optimised at each value): a slice's curve where its partner moves with it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..axes import to_axis
from .curve import Curve

SURFACE_REACH = 2  # grid steps each side of the centre, along both axes, in a local surface
RECENTRE = 3  # times a local surface may move its window onto the grid run nearest its vertex


@dataclass(frozen=True)
class Surface:
    """loss = c0 + c1 u + c2 v + c3 u^2 + c4 v^2 + c5 u v on the natural axes of a hyperparameter (u) and a
    partner (v), centred on a grid run (`center`), fitted by least squares to the finished runs within
    `REACH` grid steps of it along both; `unit_covariance` is (X'X)^-1 (times noise^2 for the real one)."""

    hparam: str
    partner: str
    center: dict[str, float]
    coefficients: np.ndarray
    unit_covariance: np.ndarray
    window: tuple[float, float]  # the runs' span along u, on the natural axis
    noise: float
    runs: int
    rss: float

    @classmethod
    def around(
        cls, configs: pd.DataFrame, best: pd.Series, hparam: str, partner: str, swept: list[str], noise: float
    ) -> Surface | None:
        """The surface centred on the best run, re-centred (up to `RECENTRE` times) on the grid run nearest
        its vertex: with a noisy best run the window follows the landscape, not the luckiest run."""
        rows = _plane(configs, best, hparam, partner, swept)
        grids = {h: np.sort(rows[h].unique().astype(float)) for h in (hparam, partner)}
        center = {h: float(best[h]) for h in (hparam, partner)}
        surface = None
        for _ in range(RECENTRE + 1):
            block = _block(rows, grids, center)
            if block is None:
                return surface
            fitted = cls._fit(block, center, hparam, partner, noise)
            if fitted is None:
                return surface
            surface = fitted
            nearest = surface.nearest_grid_run(grids)
            if nearest == center:
                break
            center = nearest
        return surface

    @classmethod
    def _fit(cls, block: pd.DataFrame, center: dict[str, float], hparam: str, partner: str,
             noise: float) -> Surface | None:
        u = to_axis(hparam, block[hparam]) - float(to_axis(hparam, center[hparam]))
        v = to_axis(partner, block[partner]) - float(to_axis(partner, center[partner]))
        design = np.stack([np.ones_like(u), u, v, u**2, v**2, u * v], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, block["loss"].to_numpy(float), rcond=None)
        hessian = np.array([[2 * coefficients[3], coefficients[5]], [coefficients[5], 2 * coefficients[4]]])
        if not np.all(np.linalg.eigvalsh(hessian) > 0):
            return None
        x0 = float(to_axis(hparam, center[hparam]))
        rss = float(np.sum((block["loss"].to_numpy(float) - design @ coefficients) ** 2))
        return cls(hparam, partner, center, coefficients, np.linalg.pinv(design.T @ design),
                   (x0 + float(u.min()), x0 + float(u.max())), noise, len(block), rss)

    def vertex(self) -> dict[str, float]:
        """The surface's minimum on the natural axes."""
        c = self.coefficients
        u, v = np.linalg.solve(np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]]), -c[1:3])
        return {self.hparam: float(to_axis(self.hparam, self.center[self.hparam])) + u,
                self.partner: float(to_axis(self.partner, self.center[self.partner])) + v}

    def nearest_grid_run(self, grids: dict[str, np.ndarray]) -> dict[str, float]:
        vertex = self.vertex()
        return {h: float(grid[np.argmin(np.abs(to_axis(h, grid) - vertex[h]))]) for h, grid in grids.items()}

    def profile(self) -> Curve:
        """The loss along u with v re-optimised at each u: p0 + p1 u + p2 u^2, its covariance by the delta
        method (the Jacobian of p in c)."""
        c0, c1, c2, c3, c4, c5 = self.coefficients
        p = np.array([c0 - c2**2 / (4 * c4), c1 - c2 * c5 / (2 * c4), c3 - c5**2 / (4 * c4)])
        jacobian = np.array([
            [1, 0, -c2 / (2 * c4), 0, c2**2 / (4 * c4**2), 0],
            [0, 1, -c5 / (2 * c4), 0, c2 * c5 / (2 * c4**2), -c2 / (2 * c4)],
            [0, 0, 0, 1, c5**2 / (4 * c4**2), -c5 / (2 * c4)],
        ])
        center = float(to_axis(self.hparam, self.center[self.hparam]))
        return Curve(p, jacobian @ self.unit_covariance @ jacobian.T, center, self.window, self.noise, self.rss,
                     self.runs - 6)


def _plane(configs: pd.DataFrame, best: pd.Series, hparam: str, partner: str, swept: list[str]) -> pd.DataFrame:
    """The runs equal to `best` in every swept hyperparameter but `hparam` and `partner`."""
    same = np.ones(len(configs), dtype=bool)
    for h in swept:
        if h not in (hparam, partner):
            same &= (configs[h] == best[h]).to_numpy()
    return configs[same]


def _block(rows: pd.DataFrame, grids: dict[str, np.ndarray], center: dict[str, float]) -> pd.DataFrame | None:
    """The finished runs within `REACH` grid steps of `center` along both axes, or None unless the 3 x 3
    core around it was run and finished."""
    steps = {h: np.searchsorted(grid, rows[h].to_numpy(float)) - np.searchsorted(grid, center[h])
             for h, grid in grids.items()}
    near = np.all([np.abs(k) <= SURFACE_REACH for k in steps.values()], axis=0)
    core = np.all([np.abs(k) <= 1 for k in steps.values()], axis=0)
    if core.sum() < 9 or rows.loc[core, "loss"].isna().any():
        return None
    block = rows[near]
    return block[block["loss"].notna()]

