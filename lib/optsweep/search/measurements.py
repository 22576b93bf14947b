"""What a sweep measures through its best: the 1-D slices, the runs within the tolerance, the seed noise,
and the compute its result rests on."""

from __future__ import annotations

import math
from typing import Any

from ..params.sections import SearchSettings
from ..results.documents import tolerance_margin
from ..runs.store import RunStatus
from .evaluator import EvaluatedRun, RunEvaluator
from .space import SearchSpace


def slices_through(space: SearchSpace, best: EvaluatedRun, evaluator: RunEvaluator) -> dict[str, list[dict[str, Any]]]:
    """The 1-D line through the best along every free hyperparameter (runs any point not yet evaluated)."""
    points = [(h, v) for h in space.free for v in space.grid[h]]
    runs = evaluator.evaluate([{**best.hparams, h: v} for h, v in points])  # one batch: the lines are independent
    slices: dict[str, list[dict[str, Any]]] = {h: [] for h in space.free}
    for (h, v), run in zip(points, runs):
        slices[h].append({"value": v, "loss": run.loss, "status": run.status})
    return slices


def near_best(best: EvaluatedRun, search: SearchSettings, evaluator: RunEvaluator) -> list[dict[str, Any]]:
    if best.status != RunStatus.OK:
        return []
    limit = best.loss + tolerance_margin(search.tolerance, search.tolerance_kind, best.loss)
    close = [run for run in evaluator.ordered_runs()
             if run.seed == evaluator.seed and run.status == RunStatus.OK and run.loss <= limit]
    return [{"hparams": run.hparams, "loss": run.loss} for run in sorted(close, key=lambda run: run.loss)]


def seed_noise(best: EvaluatedRun, search: SearchSettings, evaluator: RunEvaluator) -> dict[str, Any] | None:
    """The best and its closest competitors on extra seeds; std pooled over configs (n - 1 weighted)."""
    if search.noise_seeds == 0 or best.status != RunStatus.OK:
        return None
    competitors = sorted(
        (run for run in evaluator.ordered_runs()
         if run.seed == evaluator.seed and run.status == RunStatus.OK and run.hparams != best.hparams),
        key=lambda run: run.loss,
    )[: search.noise_candidates]
    configs = [best.hparams] + [run.hparams for run in competitors]
    seeds = [evaluator.seed + i for i in range(search.noise_seeds + 1)]
    runs = evaluator.evaluate(configs, seeds)
    rows, squares, degrees = [], 0.0, 0
    for i, hparams in enumerate(configs):
        losses = [run.loss for run in runs[i * len(seeds):(i + 1) * len(seeds)]]
        rows.append({"hparams": hparams, "losses": losses})
        finite = [loss for loss in losses if loss is not None]
        if len(finite) >= 2:
            mean = sum(finite) / len(finite)
            squares += sum((loss - mean) ** 2 for loss in finite)
            degrees += len(finite) - 1
    return {"seeds": seeds, "configs": rows, "std": math.sqrt(squares / degrees) if degrees else None}


def compute_used(evaluator: RunEvaluator, wall_s: float) -> dict[str, Any]:
    """The cost of every run this sweep's result rests on (token budgets), and what this invocation did."""
    runs = [run for run in evaluator.ordered_runs() if run.status != RunStatus.SKIPPED]
    tokens = sum(run.spec["scale"]["tokens"] for run in runs)
    flops = sum(run.spec["scale"]["tokens"] * run.spec["scale"]["flops_per_token"] for run in runs)
    return {"runs_planned": len(runs), "runs_trained": evaluator.trained, "runs_reused": evaluator.reused,
            "runs_speculative_unused": evaluator.unused_speculation(), "tokens": tokens, "flops": flops,
            "wall_s": round(wall_s, 3)}
