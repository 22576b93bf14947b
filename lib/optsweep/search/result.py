"""A scale's search as its result document: `SweepResult`, from the plan, where the search ended, and the
runs it rests on."""

from __future__ import annotations

from ..results.documents import Compute, FailedRun, Provenance, SweepResult, TransferredOptimum
from ..runs.store import RunStatus
from .evaluator import RunEvaluator
from .lowest import SearchOutcome
from .measurements import near_best
from .sweep_plan import SweepPlan


def compute_used(evaluator: RunEvaluator, wall_s: float) -> Compute:
    """The cost of every run this sweep's result rests on (token budgets), and what this invocation did."""
    runs = [run for run in evaluator.history.ordered_runs() if run.status != RunStatus.SKIPPED]
    return Compute(
        runs_planned=len(runs), runs_trained=evaluator.trained, runs_reused=evaluator.reused,
        runs_speculative_unused=evaluator.history.unasked(),
        tokens=sum(run.spec["scale"]["tokens"] for run in runs),
        flops=sum(run.spec["scale"]["tokens"] * run.spec["scale"]["flops_per_token"] for run in runs),
        wall_s=round(wall_s, 3))


def sweep_result(plan: SweepPlan, outcome: SearchOutcome, evaluator: RunEvaluator,
                 transfer: TransferredOptimum | None, wall_s: float) -> SweepResult:
    """The result document of a finished search (`wall_s`: how long this invocation took)."""
    space, descent, search, runs = plan.space, outcome.descent, plan.search, evaluator.history.ordered_runs()
    return SweepResult(
        scale=plan.specs.scale_entry(space.baseline), optimizer=plan.identity.optimizer, axes=plan.axes,
        phase=space.phase, free=space.free, fixed=space.fixed, grid=outcome.space.grid,
        grid_extensions=outcome.extensions, order=plan.order, baseline=space.baseline,
        best=descent.best.hparams, best_loss=descent.best.loss,
        near_best=near_best(descent.best, search, evaluator.history),
        passes=descent.passes, converged=descent.converged, why_not_converged=descent.why_not_converged,
        stop_rule=search.stop_rule, tolerance=search.tolerance, tolerance_kind=search.tolerance_kind,
        trajectory=descent.trajectory, runs=[run.swept() for run in runs], slices=outcome.slices,
        noise=outcome.noise,
        failed=[FailedRun(key=run.key, hparams=run.hparams, seed=run.seed, error=run.reason)
                for run in runs if run.status == RunStatus.FAILED],
        compute=compute_used(evaluator, wall_s), transfer=transfer,
        provenance=Provenance.now(plan.identity.params_hash, **plan.identity.provenance()),
    )
