"""One scale's sweep: its plan, the search on an executor, its result document, and `run_sweep`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..execution.backends import make_executor
from ..execution.protocol import Runner
from ..params.settings import StudyParams
from ..results.documents import SweepResult, as_json, write_document
from ..runs.store import RunStore
from ..runs.trainer import DEFAULT_TRAINER, code_identity
from .evaluator import RunEvaluator, heartbeat
from .lowest import search_to_lowest_run
from .progress import Progress
from .result import sweep_result
from .shared_pool import SharedPoolClient
from .sweep_plan import SweepPlan, sweep_plan
from .transfer import transfer_report


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
    plan = sweep_plan(params, scale_name, sensitivity_path, transfer_from, data)
    return search_plan(plan, RunStore(params.study.store), executor, progress)


def search_plan(plan: SweepPlan, store: RunStore, executor: Runner,
                progress: bool) -> SweepResult:
    """One scale's search as its plan says, its runs kept in `store`; the result document, not yet written."""
    started = time.perf_counter()
    bar = Progress(plan.label, progress, lines_only=isinstance(executor, SharedPoolClient))
    try:
        evaluator = RunEvaluator(plan, store, executor, bar)
        with heartbeat(evaluator.claims):
            outcome = search_to_lowest_run(plan, evaluator)
            transferred = transfer_report(outcome.carried, outcome.descent.best, evaluator)
            evaluator.drain()
    finally:
        bar.close()
    return sweep_result(plan, outcome, evaluator, transferred, time.perf_counter() - started)


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
