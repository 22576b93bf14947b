"""One scale's sweep: the search on an executor, its result document, and `run_sweep`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..axes import axis_of
from ..execution.backends import make_executor
from ..execution.protocol import Runner
from ..jsonio import to_strict
from ..optimizers import load_optimizer
from ..params.settings import StudyParams
from ..provenance import provenance
from ..results.documents import SweepResult, as_json, write_document
from ..runs.store import RunStatus, RunStore
from ..runs.trainer import DEFAULT_TRAINER, code_identity, make_run_spec
from .evaluator import RunEvaluator, heartbeat
from .lowest import search_to_lowest_run
from .measurements import compute_used, near_best
from .progress import Progress
from .shared_pool import SharedPoolClient
from .space import search_space
from .transfer import carried_optimum, transfer_report


class FailedRuns(RuntimeError):
    """A sweep ended with runs that failed: its result file lists them, but it is not a finished search."""


def study_data(params: StudyParams) -> dict[str, Any] | None:
    """The prepared data identity when the study trains with optsweep's own trainer (else None)."""
    if params.study.trainer != DEFAULT_TRAINER:
        return None
    from ..data.prepare import ensure_prepared  # only the default trainer reads prepared shards

    return ensure_prepared(params)


def search_scale(params: StudyParams, scale_name: str, sensitivity_path: str | None, transfer_from: Path | None,
            data: dict[str, Any] | None, executor: Runner, progress: bool) -> SweepResult:
    """Coordinate descent at one scale on a given executor; the result document, not yet written.
    `transfer_from`: a folder of another optimizer's sweep results whose best is carried over and trained."""
    started = time.perf_counter()
    search = params.search
    space = search_space(params, scale_name, sensitivity_path)
    trainer = params.study.trainer
    trainer_code = code_identity(trainer)
    bar = Progress(f"sweep {scale_name}" + (" (law)" if space.phase == "law" else ""), progress,
                   lines_only=isinstance(executor, SharedPoolClient))
    try:
        evaluator = RunEvaluator(params, scale_name, data, trainer_code, RunStore(params.study.store), executor, bar)
        with heartbeat(evaluator.claims):
            outcome = search_to_lowest_run(
                params, space, evaluator, lambda best: carried_optimum(params, scale_name, best, transfer_from))
            descent = outcome.descent
            transferred = transfer_report(outcome.carried, descent.best, evaluator)
            evaluator.drain()
    finally:
        bar.close()
    transfer = params.study.lr_transfer
    width = params.scale(scale_name).width
    declared = load_optimizer(params.study.optimizer).hparams
    return SweepResult.model_validate(to_strict({
        "scale": make_run_spec(params, scale_name, space.baseline, data)["scale"],
        "optimizer": params.study.optimizer,
        "axes": {h: declared[h].axis if h in declared else axis_of(h) for h in space.baseline},
        "phase": space.phase,
        "free": space.free,
        "fixed": space.fixed,
        "grid": outcome.space.grid,
        "grid_extensions": outcome.extensions,
        "order": params.coordinate_order(),
        "baseline": space.baseline,
        "best": descent.best.hparams,
        "best_loss": descent.best.loss,
        "near_best": near_best(descent.best, search, evaluator),
        "passes": descent.passes,
        "converged": descent.converged,
        "why_not_converged": descent.why_not_converged,
        "stop_rule": search.stop_rule,
        "tolerance": search.tolerance,
        "tolerance_kind": search.tolerance_kind,
        "trajectory": descent.trajectory,
        "runs": [run.report() for run in evaluator.ordered_runs()],
        "slices": outcome.slices,
        "noise": outcome.noise,
        "failed": [{"key": run.key, "hparams": run.hparams, "seed": run.seed, "error": run.reason}
                   for run in evaluator.ordered_runs() if run.status == RunStatus.FAILED],
        "compute": compute_used(evaluator, time.perf_counter() - started),
        "transfer": transferred,
        "provenance": provenance(
            params.params_hash(),
            data_hash=data.get("hash") if data else None,
            trainer=trainer,
            trainer_code=trainer_code,
            seed=params.study.seed,
            lr_transfer={"rule": transfer.rule, "reference_width": transfer.reference_width,
                         "factor": transfer.factor(width)},
        ),
    }))


def failures_message(results: list[SweepResult]) -> str | None:
    failed = [(result.scale["name"], run) for result in results for run in result.failed]
    if not failed:
        return None
    scales = ", ".join(sorted({name for name, _ in failed}))
    return (f"{scales}: {len(failed)} run(s) failed (a fault, not a result), e.g. {failed[0][1].error}; finished "
            f"runs are stored, run the sweep again to retry them (`optsweep store list --status failed`)")


def run_sweep(params: StudyParams, scale_name: str, out_path: Path, sensitivity_path: str | None = None,
              progress: bool = True, transfer_from: Path | None = None) -> dict[str, Any]:
    """Coordinate descent at one scale; writes `out_path` (a `SweepResult`, atomically) and returns its JSON.

    Raises `FailedRuns` after writing when runs failed (they are trained again by the next invocation)."""
    code_identity(params.study.trainer)  # a missing trainer module fails here, before data or workers
    data = study_data(params)
    with make_executor(params.study) as executor:
        result = search_scale(params, scale_name, sensitivity_path, transfer_from, data, executor, progress)
    write_document(Path(out_path), result)
    failures = failures_message([result])
    if failures:
        raise FailedRuns(failures)
    return as_json(result)
