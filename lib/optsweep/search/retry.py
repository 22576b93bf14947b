"""`optsweep store retry`: train a study's failed runs again now, on the study's executor."""

from __future__ import annotations

from ..execution.backends import make_executor
from ..execution.tasks import Task
from ..params.settings import StudyParams
from ..runs.store import RunRecord, RunStore
from ..runs.trainer import code_identity
from ..runs.view import failed_runs_to_retry
from .evaluator import outcome_record


def retry_failed(params: StudyParams, store: RunStore) -> tuple[list[RunRecord], list[RunRecord]]:
    """Train the retryable failed runs again now (resuming from their checkpoints); returns (new records, stale)."""
    ready, stale = failed_runs_to_retry(params, store)
    tasks = [Task(r.key, {**r.spec, "checkpoint_dir": str(store.checkpoint_dir(r.key))}) for r in ready]
    trainer, code = params.study.trainer, code_identity(params.study.trainer)
    records = []
    with make_executor(params.study) as executor:  # the study's backend: the local pool or Ray
        for outcome in executor.run(tasks):
            record = outcome_record(outcome, trainer, code)
            store.put(outcome.key, record)
            records.append(record)
    return records, stale
