"""Run tables from known truths, for testing the analysis.

The loss at a scale is a Chinchilla loss L(N, D) plus, for each hyperparameter, curvature x (distance to
the true optimum on its natural axis)^2. The true optimum of each hyperparameter is a chosen function of
the scale. Tables are sampled like a converged coordinate descent (the best grid config and every 1-D
slice through it) or as a full grid, optionally with seed noise.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

# Besiroglu et al. (2024) refit of the Chinchilla loss law.
CHINCHILLA = {"E": 1.82, "A": 482.0, "alpha": 0.348, "B": 2085.0, "beta": 0.366}


@dataclass(frozen=True)
class Scale:
    name: str
    n_params: float
    tokens: float
    width: int


def natural_axis(hparam: str, value: float) -> float:
    """Written independently of the library on purpose: the truth defines what "natural" means here."""
    if hparam in ("lr", "eps", "batch_size"):
        return math.log(value)
    if hparam == "warmup":
        return math.log1p(value)
    if hparam in ("beta1", "beta2", "momentum"):
        return math.log(1 - value)
    return value


def chinchilla_loss(n_params: float, tokens: float, law: dict[str, float] = CHINCHILLA) -> float:
    return law["E"] + law["A"] / n_params ** law["alpha"] + law["B"] / tokens ** law["beta"]


@dataclass
class Truth:
    """optimum[h](scale) -> the true optimum; curvature[h]: loss per natural-axis unit squared beyond a flat
    plateau of half-width plateau[h] (natural axis, 0 by default) around the optimum; grid[h]: the values
    run (a list, or a function of the scale for per-scale grids); step(scale, config): a loss added on top
    (e.g. a cost at clip = 0)."""

    optimum: dict[str, Callable[[Scale], float]]
    curvature: dict[str, float]
    grid: dict[str, list[float] | Callable[[Scale], list[float]]]
    loss_law: dict[str, float] = field(default_factory=lambda: dict(CHINCHILLA))
    plateau: dict[str, float] = field(default_factory=dict)
    step: Callable[[Scale, dict[str, float]], float] | None = None

    def grid_at(self, hparam: str, scale: Scale) -> list[float]:
        values = self.grid[hparam]
        return list(values(scale)) if callable(values) else list(values)

    def penalty(self, scale: Scale, hparam: str, value: float) -> float:
        """The loss one hyperparameter's distance from its optimum costs (no step)."""
        distance = abs(natural_axis(hparam, value) - natural_axis(hparam, self.optimum[hparam](scale)))
        return self.curvature[hparam] * max(distance - self.plateau.get(hparam, 0.0), 0.0) ** 2

    def loss(self, scale: Scale, hparams: dict[str, float]) -> float:
        penalty = sum(self.penalty(scale, h, v) for h, v in hparams.items())
        step = self.step(scale, hparams) if self.step is not None else 0.0
        return chinchilla_loss(scale.n_params, scale.tokens, self.loss_law) + penalty + step

    def best_grid_config(self, scale: Scale) -> dict[str, float]:
        """The grid config with the lowest loss (the surface is separable: per hyperparameter)."""
        return {
            h: min(self.grid_at(h, scale),
                   key=lambda v: (natural_axis(h, v) - natural_axis(h, self.optimum[h](scale))) ** 2)
            for h in self.grid
        }

    def best_finished_config(
        self, scale: Scale, diverged: Callable[[Scale, dict[str, float]], bool] | None = None
    ) -> dict[str, float]:
        """The grid config a converged coordinate descent ends at: per hyperparameter, the finished value with
        the lowest loss (penalty and step), the others at their nearest grid value."""
        center = self.best_grid_config(scale)
        for h in self.grid:
            finished = [v for v in self.grid_at(h, scale) if diverged is None or not diverged(scale, {**center, h: v})]
            distance = {v: abs(natural_axis(h, v) - natural_axis(h, self.optimum[h](scale))) for v in finished}
            center[h] = min(finished, key=lambda v: (self.loss(scale, {**center, h: v}), distance[v]))
        return center


def llama_scale(name: str, width: int, tokens: float, depth: int = 8) -> Scale:
    """N = depth x 12 width^2 (attention 4 d^2 + SwiGLU MLP 8 d^2 at ffn = 8/3 d)."""
    return Scale(name, float(depth * 12 * width**2), float(tokens), width)


def scale_grid(widths: list[int], token_budgets: list[float]) -> list[Scale]:
    return [llama_scale(f"w{w}_d{i}", w, t) for w in widths for i, t in enumerate(token_budgets)]


def sqrt2_grid(low: float, high: float, anchor: float = 1e-3) -> list[float]:
    """Values anchor x 2^(k/2) covering [low, high]."""
    k_low = math.floor(2 * math.log2(low / anchor))
    k_high = math.ceil(2 * math.log2(high / anchor))
    return [anchor * 2 ** (k / 2) for k in range(k_low, k_high + 1)]


def run_table(
    truth: Truth,
    scales: list[Scale],
    *,
    design: str = "slices",
    noise: float = 0.0,
    relative_noise: float = 0.0,
    seeds: int = 1,
    seed: int = 0,
    diverged: Callable[[Scale, dict[str, float]], bool] | None = None,
    seeded: int = 0,
    seed_effect: float = 0.0,
) -> pd.DataFrame:
    """One row per (config, seed). design "slices": the best finished grid config and its 1-D slices; "grid":
    every combination. `noise` is an absolute std, `relative_noise` a multiplicative one (a fraction of the
    loss). `seeds` seeds for every config, or `seeded` seeds for the best config and its neighbours (one grid
    step along each hyperparameter) and one for the rest; with `seed_effect`, a relative loss shift shared by
    every config of a scale on a seed (common random numbers). `diverged(scale, config)` marks runs whose
    loss becomes NaN (status "diverged")."""
    rng = np.random.default_rng(seed)
    rows = []
    for scale in scales:
        center = truth.best_finished_config(scale, diverged)
        shift = rng.normal(0.0, seed_effect, size=max(seeds, seeded)) if seed_effect else np.zeros(max(seeds, seeded))
        for config in _configs(truth, scale, design, center):
            runs = seeded if seeded and _neighbour(truth, scale, center, config) else seeds
            for s in range(runs):
                loss = truth.loss(scale, config) + (rng.normal(0.0, noise) if noise else 0.0)
                loss *= 1.0 + (rng.normal(0.0, relative_noise) if relative_noise else 0.0) + shift[s]
                status = "ok"
                if diverged is not None and diverged(scale, config):
                    loss, status = float("nan"), "diverged"
                rows.append(
                    {"scale": scale.name, "n_params": scale.n_params, "tokens": scale.tokens,
                     "width": scale.width, **config, "seed": s, "loss": loss, "status": status}
                )
    return pd.DataFrame(rows)


def _neighbour(truth: Truth, scale: Scale, center: dict[str, float], config: dict[str, float]) -> bool:
    """Whether `config` is `center` or one grid step from it along one hyperparameter."""
    moved = [h for h in truth.grid if config[h] != center[h]]
    if not moved:
        return True
    if len(moved) > 1:
        return False
    grid = sorted(truth.grid_at(moved[0], scale))
    return abs(grid.index(config[moved[0]]) - grid.index(center[moved[0]])) == 1


def _configs(truth: Truth, scale: Scale, design: str, center: dict[str, float]) -> list[dict[str, float]]:
    if design == "grid":
        names = list(truth.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(truth.grid_at(h, scale) for h in names))]
    configs = [center]
    for h in truth.grid:
        configs += [{**center, h: v} for v in truth.grid_at(h, scale) if v != center[h]]
    return configs


def constant(value: float) -> Callable[[Scale], float]:
    return lambda scale: value
