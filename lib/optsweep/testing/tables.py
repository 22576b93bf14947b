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
    if hparam in ("lr", "eps", "batch_size", "adam_lr"):
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
    """optimum[h](scale) -> the true optimum; curvature[h]: loss per natural-axis unit squared;
    grid[h]: the values run (a list, or a function of the scale for per-scale grids)."""

    optimum: dict[str, Callable[[Scale], float]]
    curvature: dict[str, float]
    grid: dict[str, list[float] | Callable[[Scale], list[float]]]
    loss_law: dict[str, float] = field(default_factory=lambda: dict(CHINCHILLA))

    def grid_at(self, hparam: str, scale: Scale) -> list[float]:
        values = self.grid[hparam]
        return list(values(scale)) if callable(values) else list(values)

    def loss(self, scale: Scale, hparams: dict[str, float]) -> float:
        penalty = sum(
            self.curvature[h] * (natural_axis(h, v) - natural_axis(h, self.optimum[h](scale))) ** 2
            for h, v in hparams.items()
        )
        return chinchilla_loss(scale.n_params, scale.tokens, self.loss_law) + penalty

    def best_grid_config(self, scale: Scale) -> dict[str, float]:
        """The grid config with the lowest loss (the surface is separable: per hyperparameter)."""
        return {
            h: min(self.grid_at(h, scale),
                   key=lambda v: (natural_axis(h, v) - natural_axis(h, self.optimum[h](scale))) ** 2)
            for h in self.grid
        }


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
) -> pd.DataFrame:
    """One row per (config, seed). design "slices": the best grid config and its 1-D slices; "grid": every
    combination. `noise` is an absolute std, `relative_noise` a multiplicative one (a fraction of the loss).
    `diverged(scale, config)` marks runs whose loss becomes NaN (status "diverged")."""
    rng = np.random.default_rng(seed)
    rows = []
    for scale in scales:
        for config in _configs(truth, scale, design):
            for s in range(seeds):
                loss = truth.loss(scale, config) + (rng.normal(0.0, noise) if noise else 0.0)
                loss *= 1.0 + (rng.normal(0.0, relative_noise) if relative_noise else 0.0)
                status = "ok"
                if diverged is not None and diverged(scale, config):
                    loss, status = float("nan"), "diverged"
                rows.append(
                    {"scale": scale.name, "n_params": scale.n_params, "tokens": scale.tokens,
                     "width": scale.width, **config, "seed": s, "loss": loss, "status": status}
                )
    return pd.DataFrame(rows)


def _configs(truth: Truth, scale: Scale, design: str) -> list[dict[str, float]]:
    if design == "grid":
        names = list(truth.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(truth.grid_at(h, scale) for h in names))]
    center = truth.best_grid_config(scale)
    configs = [center]
    for h in truth.grid:
        configs += [{**center, h: v} for v in truth.grid_at(h, scale) if v != center[h]]
    return configs


def constant(value: float) -> Callable[[Scale], float]:
    return lambda scale: value
