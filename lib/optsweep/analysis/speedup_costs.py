"""What tuning each optimizer cost, and its speedup over the reference in compute and in wall-clock time.

A token speedup D_eff / D says nothing about what a token costs. From the runs' measured results (every
stored run result has `flops` and `tokens_per_s`), per optimizer and scale, the median over its finished runs
of FLOPs per token and of tokens per second give

    compute speedup    = (reference FLOPs per token x D_eff) / (FLOPs per token x D)
    wall-clock speedup = (D_eff / reference tokens per s)    / (D / tokens per s)

both at the same scale as the reference's. Their intervals are the token speedup's, scaled by the same
factor: the throughput is taken as known (it is measured on every run, the loss on one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results.speedup_documents import Interval, Speedup, TuningBudget
from .table import MISSING_STATUSES

KEYS = ["optimizer", "scale"]


def _numeric(runs: pd.DataFrame, column: str) -> pd.Series:
    if column not in runs.columns:
        return pd.Series(np.nan, index=runs.index)
    return pd.to_numeric(runs[column], errors="coerce").astype(float)


def cost_per_token(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (optimizer, scale) of `runs` (finished runs, `tokens` numeric): the median `flops_per_token` (from a
    column of that name, else `flops / tokens`) and `tokens_per_s`, NaN where the table does not record them."""
    flops = _numeric(runs, "flops_per_token")
    if flops.isna().all():
        flops = _numeric(runs, "flops") / runs["tokens"]
    frame = runs[KEYS].assign(flops_per_token=flops, tokens_per_s=_numeric(runs, "tokens_per_s"))
    return frame.groupby(KEYS, sort=True).median()


def with_costs(speedup: Speedup, costs: pd.DataFrame, reference: str) -> Speedup:
    """`speedup` with its cost per token and the reference's at its scale, and the compute and wall-clock
    speedups where both sides recorded them and D_eff is finite."""
    ours = _costs_at(costs, speedup.optimizer, speedup.scale)
    theirs = _costs_at(costs, reference, speedup.scale)
    update = {"flops_per_token": ours[0], "tokens_per_s": ours[1],
              "reference_flops_per_token": theirs[0], "reference_tokens_per_s": theirs[1]}
    if ours[0] and theirs[0]:  # FLOPs per token: the reference's spend on D_eff over ours on D
        update |= _scaled(speedup, theirs[0] / ours[0], "compute")
    if ours[1] and theirs[1]:  # seconds per token are 1 / tokens_per_s
        update |= _scaled(speedup, ours[1] / theirs[1], "wall_clock")
    return speedup.model_copy(update=update)


def _costs_at(costs: pd.DataFrame, optimizer: str, scale: str) -> tuple[float | None, float | None]:
    if (optimizer, scale) not in costs.index:
        return None, None
    row = costs.loc[(optimizer, scale)]
    return tuple(float(row[c]) if np.isfinite(row[c]) and row[c] > 0 else None  # type: ignore[return-value]
                 for c in ("flops_per_token", "tokens_per_s"))


def _scaled(speedup: Speedup, factor: float, name: str) -> dict:
    low, high = speedup.interval
    interval: Interval = (None if low is None else low * factor, None if high is None else high * factor)
    value = None if speedup.speedup is None else speedup.speedup * factor
    return {f"{name}_speedup": value, f"{name}_interval": interval}


def table_budgets(table: pd.DataFrame, tuned: pd.DataFrame) -> list[TuningBudget]:
    """Per (optimizer, scale) of a runs table: the runs it lists (trained ones: diverged count, skipped and
    failed do not), the FLOPs they spent (a `flops` column; else None) and the tuned loss."""
    runs = table.assign(optimizer=table["optimizer"].astype(str), scale=table["scale"].astype(str))
    if "status" in runs.columns:
        runs = runs[~runs["status"].isin(MISSING_STATUSES)]
    best = {(row.optimizer, row.scale): float(row.loss) for row in tuned.itertuples()}
    budgets = []
    for (optimizer, scale), group in runs.groupby(KEYS, sort=True):
        flops = _numeric(group, "flops")
        budgets.append(TuningBudget(optimizer=optimizer, scale=scale, phase=None, runs=len(group),
                                    flops=float(flops.sum()) if flops.notna().any() else None,
                                    best_loss=best.get((optimizer, scale))))
    return budgets
