"""What a sweep measures through its best: the 1-D slices, the runs within the tolerance and the seed noise."""

from __future__ import annotations

import math
from typing import Any

from ..params.sections import SearchSettings
from ..results.documents import SeedNoise, SlicePoint, tolerance_margin
from ..runs.store import RunStatus
from .history import EvaluatedRun, Evaluations, SweepHistory
from .space import SearchSpace


def slices_through(space: SearchSpace, best: EvaluatedRun, runs: Evaluations) -> dict[str, list[SlicePoint]]:
    """The 1-D line through the best along every free hyperparameter (runs any point not yet evaluated)."""
    points = [(h, v) for h in space.free for v in space.grid[h]]
    evaluated = runs.evaluate([{**best.hparams, h: v} for h, v in points])  # one batch: the lines are independent
    slices: dict[str, list[SlicePoint]] = {h: [] for h in space.free}
    for (h, v), run in zip(points, evaluated):
        slices[h].append(SlicePoint(value=v, loss=run.loss, status=run.status))
    return slices


def near_best(best: EvaluatedRun, search: SearchSettings, history: SweepHistory) -> list[dict[str, Any]]:
    if best.status != RunStatus.OK:
        return []
    limit = best.loss + tolerance_margin(search.tolerance, search.tolerance_kind, best.loss)
    close = [run for run in history.on_sweep_seed() if run.status == RunStatus.OK and run.loss <= limit]
    return [{"hparams": run.hparams, "loss": run.loss} for run in sorted(close, key=lambda run: run.loss)]


def seed_noise(best: EvaluatedRun, search: SearchSettings, runs: Evaluations) -> SeedNoise | None:
    """The best and its closest competitors on extra seeds; std pooled over configs (n - 1 weighted)."""
    if search.noise_seeds == 0 or best.status != RunStatus.OK:
        return None
    history = runs.history
    competitors = sorted(
        (run for run in history.on_sweep_seed() if run.status == RunStatus.OK and run.hparams != best.hparams),
        key=lambda run: run.loss,
    )[: search.noise_candidates]
    configs = [best.hparams] + [run.hparams for run in competitors]
    seeds = [history.seed + i for i in range(search.noise_seeds + 1)]
    evaluated = runs.evaluate(configs, seeds)
    rows, squares, degrees = [], 0.0, 0
    for i, hparams in enumerate(configs):
        losses = [run.loss for run in evaluated[i * len(seeds):(i + 1) * len(seeds)]]
        rows.append({"hparams": hparams, "losses": losses})
        finite = [loss for loss in losses if loss is not None]
        if len(finite) >= 2:
            mean = sum(finite) / len(finite)
            squares += sum((loss - mean) ** 2 for loss in finite)
            degrees += len(finite) - 1
    return SeedNoise(seeds=seeds, configs=rows, std=math.sqrt(squares / degrees) if degrees else None)
