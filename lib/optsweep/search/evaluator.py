"""Turning configs into runs: from the sweep's memory, then the run store, else trained by the executor.

Every run goes through the run store (never trained twice) and the executor (runs of one coordinate in
parallel). Claims keep two drivers from training the same run; a heartbeat keeps a driver's claims fresh.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

from ..execution.protocol import Runner
from ..execution.tasks import Outcome, Task
from ..runs.store import CLAIM_HEARTBEAT_S, RunClaims, RunRecord, RunStatus, RunStore, run_key
from ..runs.trainer import invalid_reason, is_diverged
from .history import EvaluatedRun, SweepHistory, run_from_record
from .progress import Progress
from .shared_pool import SharedPoolClient
from .space import Config
from .sweep_plan import SweepPlan

CLAIM_POLL_S = 1.0  # how often a driver looks for runs that another driver has claimed
Pending = dict[str, tuple[Config, int, dict[str, Any]]]  # by run key: the config, its seed, the task's spec


class RunEvaluator:
    """Turns configs into runs: from this sweep's memory, then the run store, else trained by the executor.
    It is the `Evaluations` the stop rules see (`history.py`)."""

    def __init__(self, plan: SweepPlan, store: RunStore, executor: Runner, progress: Progress):
        self.plan, self.store, self.executor, self.progress = plan, store, executor, progress
        self.trainer, self.trainer_code = plan.identity.trainer, plan.identity.trainer_code
        self.claims = RunClaims(store)
        self.history = SweepHistory(plan.identity.seed)
        self.speculative: Pending = {}  # submitted ahead, not back yet
        self.trained = self.reused = 0

    def _key(self, spec: dict[str, Any]) -> str:
        return run_key(spec, self.trainer, self.trainer_code)

    def _task(self, key: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {**spec, "checkpoint_dir": str(self.store.checkpoint_dir(key))}

    def prefetch(self, configs: list[Config]) -> None:
        """Start training configs the search will probably ask for next, on workers that would otherwise idle
        (`search.speculate`; only on a pool shared by a phase). Their results are stored like any run."""
        if not isinstance(self.executor, SharedPoolClient):
            return
        tasks, seed = [], self.history.seed
        for hparams in configs:
            if self.history.known(hparams):
                continue
            spec = self.plan.spec(hparams, seed)
            key = self._key(spec)
            if key in self.speculative or invalid_reason(spec) or self.store.get_result(key) is not None:
                continue
            if self.claims.acquire(key):
                self.speculative[key] = (dict(hparams), seed, spec)
                tasks.append(Task(key, self._task(key, spec)))
        self.progress.plan(len(tasks), 0, self.history.best_loss())
        self.executor.submit(tasks, speculative=True)

    def drain(self) -> None:
        """Wait for the runs still training ahead of the search (they are stored, not lost)."""
        if self.speculative:
            self._record_outcomes({}, self.executor.wait_for(set(self.speculative)))

    def evaluate(self, configs: list[Config], seeds: list[int] | None = None) -> list[EvaluatedRun]:
        """Every config on every seed (default: the sweep's seed), in that order; duplicates are run once."""
        pairs = [(dict(hparams), seed) for hparams in configs for seed in (seeds or [self.history.seed])]
        self.history.ask(pairs)
        tasks, ahead = self._look_up(pairs)
        if tasks:
            self.executor.start()  # a worker that cannot start stops the sweep before any run is claimed
        while tasks:
            self._train_or_find(tasks)
            if tasks:  # claimed by other live drivers: wait for their results (or for their claims to go stale)
                time.sleep(CLAIM_POLL_S)
        ahead &= set(self.speculative)  # some may have come back while this line trained
        if ahead:
            self._record_outcomes({}, self.executor.wait_for(ahead))
        return [self.history.get(hparams, seed) for hparams, seed in pairs]

    def _look_up(self, pairs: list[tuple[Config, int]]) -> tuple[Pending, set[str]]:
        """Settle what is known (this sweep's runs, invalid specs, the run store); return the runs to train and
        the keys already training speculatively (to wait for)."""
        tasks: Pending = {}
        ahead: set[str] = set()
        reused = 0
        for hparams, seed in pairs:
            if self.history.get(hparams, seed) is not None:
                continue
            spec = self.plan.spec(hparams, seed)
            key = self._key(spec)
            if key in self.speculative:
                ahead.add(key)
                continue
            reason = invalid_reason(spec)
            record = None if reason else self.store.get_result(key)  # a failed run is trained again
            if reason:
                self.history.add(EvaluatedRun(key, hparams, seed, RunStatus.SKIPPED, None, reason, spec=spec))
            elif record is not None:
                self.history.add(run_from_record(record, hparams, seed))
                reused += 1
            else:
                tasks[key] = (hparams, seed, self._task(key, spec))
        self.reused += reused
        self.progress.plan(len(tasks), reused, self.history.best_loss())
        return tasks, ahead

    def _train_or_find(self, tasks: Pending) -> None:
        """Train the tasks this driver claims; take those another driver stored meanwhile (it stores, then
        releases its claim). Both leave `tasks`: what stays is claimed by other live drivers."""
        claimed = [key for key in list(tasks) if self.claims.acquire(key)]
        for key in list(tasks):
            record = self.store.get_result(key)
            if record is not None:
                hparams, seed, _ = tasks.pop(key)
                self.claims.release(key)
                run = run_from_record(record, hparams, seed)
                self.history.add(run)
                self.reused += 1
                self.progress.trained(run, self.history.best_loss())
        self._train({key: tasks.pop(key) for key in claimed if key in tasks})

    def _train(self, tasks: Pending) -> None:
        """Train claimed tasks; store each outcome as it comes, then release its claim."""
        if tasks:
            self._record_outcomes(tasks, self.executor.run([Task(key, spec) for key, (_, _, spec) in tasks.items()]))

    def _record_outcomes(self, tasks: Pending, outcomes: Iterator[Outcome]) -> None:
        """Store each outcome (of `tasks` or of a speculative run) as it comes, then release its claim."""
        for outcome in outcomes:
            hparams, seed, _ = tasks[outcome.key] if outcome.key in tasks else self.speculative.pop(outcome.key)
            record = outcome_record(outcome, self.trainer, self.trainer_code)
            self.store.put(outcome.key, record)
            self.claims.release(outcome.key)
            run = run_from_record(record, hparams, seed)
            self.history.add(run)
            self.trained += 1
            self.progress.trained(run, self.history.best_loss())


def outcome_record(outcome: Outcome, trainer: str, trainer_code: str) -> RunRecord:
    """The run store's record of an executor outcome: failed (a fault), diverged or ok."""
    if outcome.error is not None:
        status, loss = RunStatus.FAILED, None
    elif is_diverged(outcome.result):
        status, loss = RunStatus.DIVERGED, None
    else:
        status, loss = RunStatus.OK, float(outcome.result["loss"])
    return RunRecord(
        key=outcome.key, status=status, loss=loss, spec=outcome.spec, trainer=trainer, trainer_code=trainer_code,
        result=outcome.result, error=outcome.error, attempts=outcome.attempts, wall_s=round(outcome.wall_s, 3),
    )


@contextlib.contextmanager
def heartbeat(claims: RunClaims) -> Iterator[None]:
    """Keep this driver's claims fresh while it works; release them all when it stops, however it stops."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(CLAIM_HEARTBEAT_S):
            claims.refresh()

    thread = threading.Thread(target=beat, name="optsweep-claims-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        claims.release_all()
